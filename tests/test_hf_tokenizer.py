"""Tests of hf_tokenizer.py: foreign tokenizer files as tokenizer.Encoding, checked against the `tokenizers` library
(tokenizers trained inside the test, one with SmolLM2's missing bytes) and against the real GPT-2 vocabulary shipped
in openai-whisper; which layout of files means what; and the tokenizer.json written back."""

import importlib.util
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import regex

from configurator import UserError
from data.synth import make_split
from hf_tokenizer import (
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    byte_level_alphabet,
    copy_tokenizer_files,
    load_hf_tokenizer,
    load_llama3_model,
    load_rank_file,
    load_vocab_bpe,
    merges_from_ranks,
    tokenizer_layout,
    write_tokenizer_json,
)
from tokenizer import Encoding, load_ranks, load_tokenizer, save_ranks, save_tokenizer

# The data beside the repository (../shared), or where NANOAFT_SHARED says (a git worktree elsewhere).
GSM8K_DIR = Path(os.environ.get("NANOAFT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "gsm8k"
GSM8K = GSM8K_DIR / "train.jsonl"
INLINE = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.\n"
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.\n"
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.",
    "Betty's parents gave her $15 and her grandparents twice as much. It's 1,000,000 times   larger.\n\n#### 5",
]


def gsm8k_texts(n=400):
    """Question + answer of the first n GSM8K training problems; without the data, n problems of the built-in
    task, which are written in GSM8K's format."""
    if not GSM8K.is_file():
        return [row["question"] + "\n" + row["answer"] for row in make_split(n, seed=0)] + INLINE
    with open(GSM8K) as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [row["question"] + "\n" + row["answer"] for row in rows]


def awkward_texts(n=600, seed=0):
    """Random strings from pieces where pre-tokenizers disagree when built wrong: runs of spaces before
    digits, newlines, tabs, contractions, non-ASCII digits and letters, no-break space, decomposed accents."""
    pieces = list("ab c1 2\n\t'sé.,$ 9x ") + ["  ", "\n\n", "'ll", "\u00a0", "\r\n", "٣", "Ⅻ", "e\u0301", "🙂"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def test_byte_level_alphabet_is_gpt2s():
    tokenizers = pytest.importorskip("tokenizers")
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert set(alphabet) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    # GPT-2's well-known stand-ins: space is "Ġ" (U+0120), newline "Ċ" (U+010A), "!" itself
    assert alphabet["Ġ"] == 32 and alphabet["Ċ"] == 10 and alphabet["!"] == 33 and alphabet["Ā"] == 0


# -----------------------------------------------------------------------------
# tokenizer.json parity with the tokenizers library

def train_hf_tokenizer(kind, texts):
    """A byte-level BPE tokenizer trained by the tokenizers library, in the pre-tokenizer style of GPT-2,
    SmolLM (digits apart) or Llama-3 / Qwen2 (Split regex, with Qwen2's NFC normalizer)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind != "split")
    tok = tokenizers.Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = byte_level
    elif kind == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"), byte_level])
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@pytest.mark.parametrize("kind", ["gpt2", "digits", "split"])
def test_tokenizer_json_matches_tokenizers_library(kind, tmp_path):
    texts = gsm8k_texts()
    # awkward training text too, so that merges exist across the boundaries a wrong regex would draw
    reference = train_hf_tokenizer(kind, texts[:300] + awkward_texts(seed=1))
    reference.save(str(tmp_path / "tokenizer.json"))
    enc = load_hf_tokenizer(tmp_path)
    assert isinstance(enc, Encoding) and enc.eot_token == reference.token_to_id("<|endoftext|>") == 0
    held_out = texts[300:] + awkward_texts()
    for text in held_out:
        ids = enc.encode_ordinary(text)
        assert ids == reference.encode(text).ids, text
        assert enc.decode(ids) == reference.decode(ids)
    merged = sum(len(enc.encode_ordinary(t)) for t in texts[300:]) / sum(len(t) for t in texts[300:])
    assert merged < 0.5  # the merges are used: well under one token per character


def test_eos_comes_from_tokenizer_config_not_endoftext(tmp_path):
    reference = train_hf_tokenizer("gpt2", gsm8k_texts()[:100])
    reference.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    enc = load_hf_tokenizer(tmp_path)
    im_end = reference.token_to_id("<|im_end|>")
    assert im_end == 2 and enc.eot_token == im_end and enc.eot_name == "<|im_end|>"
    assert enc.encode("hi<|im_end|>", allowed_special="all")[-1] == im_end
    assert im_end not in enc.encode_ordinary("<|im_end|>")  # dataset text never produces it
    # the AddedToken-dict spelling of special_tokens_map.json, and pickling (DataLoader workers) keep it
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|im_start|>"}}))
    enc = pickle.loads(pickle.dumps(load_hf_tokenizer(tmp_path)))
    assert enc.eot_token == reference.token_to_id("<|im_start|>") == 1
    # an eos that is not a special token is refused
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(UserError, match="'</s>'"):
        load_hf_tokenizer(tmp_path)


def test_bos_from_template_post_processor(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    reference = train_hf_tokenizer("gpt2", gsm8k_texts()[:100])
    reference.post_processor = tokenizers.processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[
        ("<|im_start|>", reference.token_to_id("<|im_start|>"))])
    reference.save(str(tmp_path / "tokenizer.json"))
    enc = load_hf_tokenizer(tmp_path)
    text = gsm8k_texts()[0]
    assert [enc.bos_token_id] + enc.encode_ordinary(text) == reference.encode(text).ids
    assert enc.bos_name == "<|im_start|>" and enc.bos_token_id == 1


def write_bare_tokenizer_json(path, model=None, pre_tokenizer=None, normalizer=None):
    vocab = {char: i for i, char in enumerate(byte_level_alphabet())}
    model = model or {"type": "BPE", "vocab": vocab, "merges": []}
    pre_tokenizer = pre_tokenizer or {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    path.write_text(json.dumps({"model": model, "pre_tokenizer": pre_tokenizer, "normalizer": normalizer,
                                "added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": True}]}))


@pytest.mark.parametrize("edit, message", [
    ({"model": {"type": "Unigram", "vocab": [["a", -1.0]]}}, "'Unigram'"),
    ({"model": {"type": "BPE", "byte_fallback": True, "vocab": {"▁a": 0}, "merges": []}}, "byte_fallback"),
    ({"model": {"type": "BPE", "vocab": {"▁a": 0, "<|endoftext|>": 1}, "merges": []}}, "'▁a'"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "does not end with ByteLevel"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "add_prefix_space"),
    ({"normalizer": {"type": "Lowercase"}}, "Lowercase"),
])
def test_unsupported_tokenizer_json_is_refused(tmp_path, edit, message):
    write_bare_tokenizer_json(tmp_path / "tokenizer.json", **edit)
    with pytest.raises(UserError, match=message) as error:
        load_hf_tokenizer(tmp_path)
    assert "tokenizer.json" in str(error.value)


@pytest.mark.parametrize("name, text", [
    ("tokenizer.json", ""),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0'),  # cut short
    ("tokenizer.json", "[]"),
    ("tokenizer.json", '{"model": "BPE"}'),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": [1, 2], "merges": []}}'),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": "0"}, "merges": [1]}}'),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {}}, "added_tokens": [{"content": "x"}]}'),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {}}, "pre_tokenizer": {"type": "ByteLevel"}}'),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"x": {"content": "<|endoftext|>"}}}'),
    ("tokenizer_config.json", "[1]"),
])
def test_malformed_tokenizer_files_are_one_line_naming_the_file(tmp_path, name, text):
    write_bare_tokenizer_json(tmp_path / "tokenizer.json")
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=name) as error:
        load_hf_tokenizer(tmp_path)
    assert "\n" not in str(error.value)


def test_merge_order_must_follow_ids(tmp_path):
    vocab = {char: i for i, char in enumerate(byte_level_alphabet())}
    vocab.update({"ab": 258, "abc": 257})  # "abc" = merge 1 gets a lower id than "ab" = merge 0
    model = {"type": "BPE", "vocab": vocab, "merges": ["a b", "ab c"]}
    write_bare_tokenizer_json(tmp_path / "tokenizer.json", model=model)
    with pytest.raises(UserError, match="merge 1"):
        load_hf_tokenizer(tmp_path)


# -----------------------------------------------------------------------------
# GPT-2's real vocabulary: the rank file, and the original encoder.json + vocab.bpe

def gpt2_rank_file():
    spec = importlib.util.find_spec("whisper")  # located without importing it (it needs numba)
    path = spec and Path(spec.origin).parent / "assets" / "gpt2.tiktoken"
    if not path or not path.is_file():
        pytest.skip("openai-whisper (the source of gpt2.tiktoken) is not installed")
    return path


def test_gpt2_rank_file_encodes_hello_world():
    enc = load_rank_file(gpt2_rank_file())
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257
    assert enc.decode(enc.encode_ordinary(gsm8k_texts()[0])) == gsm8k_texts()[0]


def test_gpt2_vocab_bpe_equals_rank_file_and_tokenizers_library(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    ranks = load_ranks(str(gpt2_rank_file()))
    stand_in = {b: char for char, b in byte_level_alphabet().items()}
    spell = lambda token: "".join(stand_in[b] for b in token)  # noqa: E731
    encoder = {spell(token): rank for token, rank in ranks.items()} | {"<|endoftext|>": 50256}
    merges = [f"{spell(a)} {spell(b)}" for a, b in merges_from_ranks(ranks)]
    (tmp_path / "encoder.json").write_text(json.dumps(encoder))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")

    enc = load_vocab_bpe(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert enc._mergeable_ranks == ranks and enc._special_tokens == {"<|endoftext|>": 50256}
    assert enc.eot_token == 50256 and enc.encode_ordinary("hello world") == [31373, 995]

    reference = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(tmp_path / "encoder.json"),
                                                                     str(tmp_path / "vocab.bpe")))
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in gsm8k_texts(200) + awkward_texts(300):
        assert enc.encode_ordinary(text) == reference.encode(text).ids, text


# -----------------------------------------------------------------------------
# Llama-3's tokenizer.model, directory lookup, copying

def test_llama3_tokenizer_model(tmp_path):
    assert regex.findall(LLAMA3_PATTERN, "I'M 12345 apples\n\n") == ["I", "'M", " ", "123", "45", " apples", "\n\n"]
    assert regex.findall(GPT2_PATTERN, "I'm 12345  apples") == ["I", "'m", " 12345", " ", " apples"]
    ranks = {bytes([b]): b for b in range(256)} | {b"ap": 256, b"apple": 257, b"pl": 258}
    save_ranks(ranks, str(tmp_path / "tokenizer.model"))
    enc = load_llama3_model(tmp_path / "tokenizer.model")
    # Llama-3's layout: <|begin_of_text|> right after the ranks, 256 special tokens in all
    assert enc.bos_token_id == 259 and enc.eot_token == 260 and enc.n_vocab == 259 + 256
    assert enc.encode("<|eot_id|>", allowed_special="all") == [259 + 9]
    # a tokenizer_config.json beside it declares the special tokens and the eos instead (an instruct model)
    added = {"300": {"content": "<|begin_of_text|>"}, "301": {"content": "<|eot_id|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added,
                                                                "eos_token": "<|eot_id|>"}))
    enc = load_hf_tokenizer(tmp_path)
    assert enc.eot_token == 301 and enc.bos_token_id == 300 and enc.n_vocab == 302
    # a sentencepiece model (protobuf) is refused by name
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    with pytest.raises(UserError, match="sentencepiece"):
        load_hf_tokenizer(tmp_path)


def test_directory_lookup_and_copy(tmp_path):
    with pytest.raises(UserError, match="no tokenizer files"):
        load_hf_tokenizer(tmp_path)
    reference = train_hf_tokenizer("digits", gsm8k_texts()[:100])
    reference.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert copy_tokenizer_files(tmp_path, tmp_path / "copy") == ["tokenizer.json", "tokenizer_config.json"]
    enc = load_hf_tokenizer(tmp_path / "copy")
    assert enc.eot_token == 2 and enc.encode_ordinary("12 apples") == reference.encode("12 apples").ids


def test_runtime_modules_do_not_import_development_libraries():
    code = ("import sys, hf, hf_tokenizer; "
            "print(sorted(m for m in ('transformers', 'tokenizers', 'sentencepiece') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.strip() == "[]"


# -----------------------------------------------------------------------------
# A vocabulary without a full byte alphabet, as SmolLM2's

# The byte values SmolLM2-135M's tokenizer.json has no token for (its vocabulary holds the other 235 as ids
# 17..251): six ASCII control characters, 0xC0 and 0xC1 (never in UTF-8), 0xF1 and 0xF2 (the lead bytes of
# U+40000..U+BFFFF) and 0xF5..0xFF (never in UTF-8).
SMOLLM2_MISSING = [0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)]


def all_gsm8k_texts():
    """Question + answer of every GSM8K problem (train and test); without the data, the built-in task's."""
    files = sorted(GSM8K_DIR.glob("*.jsonl"))
    if not files:
        return gsm8k_texts(2000)
    texts = []
    for path in files:
        with open(path) as f:
            texts += [row["question"] + "\n" + row["answer"] for row in map(json.loads, f)]
    return texts


def missing_byte_texts(n=3000, seed=0):
    """awkward_texts' pieces plus every character that holds a missing byte: the ASCII control characters, and
    code points whose UTF-8 starts with 0xF1 or 0xF2; and their neighbours that are present (0x1C, 0x1F)."""
    pieces = (list("ab c1 2\n\t'sé.,$ 9x ") + ["  ", "\n\n", "'ll", "\u00a0", "\r\n", "..", "e\u0301", "🙂", "\x1c",
              "\x1f"] + [chr(b) for b in SMOLLM2_MISSING if b < 0x80] + ["\U00040000", "\U0008abcd", "\U000bffff"])
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def smollm2_style(tmp_path_factory):
    """A SmolLM2-style tokenizer.json (Digits + ByteLevel, <|endoftext|> = 0, no unk_token), trained by the
    tokenizers library on GSM8K text and on text holding the missing bytes (so merges with them exist), then cut
    as SmolLM2's is: the 21 byte tokens removed, every merge that uses a removed token removed (with the token it
    makes), and the ids renumbered without gaps. Returns (directory, the tokenizers.Tokenizer of that file)."""
    tokenizers = pytest.importorskip("tokenizers")
    reference = train_hf_tokenizer("digits", gsm8k_texts(1000) + missing_byte_texts(2000, seed=1))
    data = json.loads(reference.to_str())
    stand_in = {b: char for char, b in byte_level_alphabet().items()}
    removed = {stand_in[b] for b in SMOLLM2_MISSING}
    merges = []
    for left, right in data["model"]["merges"]:
        if left in removed or right in removed:
            removed.add(left + right)
        else:
            merges.append([left, right])
    assert len(merges) < len(data["model"]["merges"])  # some merges did use the removed bytes
    kept = sorted((i, token) for token, i in data["model"]["vocab"].items() if token not in removed)
    data["model"].update(vocab={token: new for new, (_, token) in enumerate(kept)}, merges=merges)
    assert data["model"]["unk_token"] is None
    directory = tmp_path_factory.mktemp("smollm2")
    (directory / "tokenizer.json").write_text(json.dumps(data))
    return directory, tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))


def test_what_tokenizers_does_with_missing_bytes(smollm2_style):
    """The evidence our Encoding is built on: without an unk_token the tokenizers library drops a byte that has
    no token, inside its piece, and merges what remains of the piece as if the byte had never been there."""
    _, reference = smollm2_style
    tokens = lambda text: reference.encode(text).tokens  # noqa: E731
    assert tokens("\x04") == []
    assert tokens("a\x04b") == ["a", "b"]  # three pieces (letters, punctuation, letters); the middle one vanishes
    assert tokens(".\x04.") == tokens("..") == [".."]  # one piece: the dots meet and merge
    assert tokens("7\x1d8") == ["7", "8"]
    assert "".join(tokens("\U00040000")) == "ĢĢĢ"  # F1 80 80 80: the lead byte goes, the three 0x80 ("Ģ") stay


def test_missing_bytes_match_tokenizers_on_all_gsm8k_and_adversarial_text(smollm2_style):
    import tiktoken

    directory, reference = smollm2_style
    enc = load_hf_tokenizer(directory)
    assert sorted(enc.missing_bytes) == SMOLLM2_MISSING and enc.eot_token == 0
    texts = all_gsm8k_texts() + missing_byte_texts()
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert ids == reference.encode(text).ids, text
    with_missing = [t for t in missing_byte_texts() if enc._prepare(t)[1]]
    assert len(with_missing) > 2000  # the slow path was taken, many times
    # tiktoken alone would panic on them (a native error, not an exception a user could read)
    plain = tiktoken.Encoding("plain", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                              special_tokens=enc._special_tokens)
    with pytest.raises(BaseException, match="no entry found"):
        plain.encode_ordinary(with_missing[0])
    # special tokens still work around missing bytes; saved and loaded as nanoAFT's files, the same Encoding
    text = "<|im_start|>a\x04.\x04.<|im_end|>"
    assert enc.encode(text, allowed_special="all") == [1, *reference.encode("a\x04.\x04.").ids, 2]
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode(text)
    save_tokenizer(enc, directory / "ours")
    again = pickle.loads(pickle.dumps(load_tokenizer(directory / "ours")))
    assert all(again.encode_ordinary(t) == enc.encode_ordinary(t) for t in with_missing[:300])


def test_transformers_drops_missing_bytes_the_same_way(smollm2_style, tmp_path):
    transformers = pytest.importorskip("transformers")
    directory, _ = smollm2_style
    enc = load_hf_tokenizer(directory)
    write_tokenizer_json(enc, tmp_path)  # tokenizer.json + tokenizer_config.json, for AutoTokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert theirs.eos_token_id == enc.eot_token == 0
    for text in missing_byte_texts(500, seed=3) + gsm8k_texts(50):
        assert theirs(text, add_special_tokens=False)["input_ids"] == enc.encode_ordinary(text), text


def test_unk_token_with_missing_bytes_is_refused(smollm2_style, tmp_path):
    directory, _ = smollm2_style
    data = json.loads((directory / "tokenizer.json").read_text())
    data["model"]["unk_token"] = "<|endoftext|>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="unk_token='<|endoftext|>' with no token for byte"):
        load_hf_tokenizer(tmp_path)


# -----------------------------------------------------------------------------
# Which files mean what (the table in hf_tokenizer.py's docstring)

def write_layout(directory, names):
    """Files named `names` in `directory`, each with valid content of its kind (tiny tokenizers)."""
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    for name in names:
        if name == "tokenizer.json":
            write_tokenizer_json(load_tokenizer_from_ranks(ranks), directory)
        elif name in ("vocab.json", "encoder.json"):
            stand_in = {b: char for char, b in byte_level_alphabet().items()}
            vocab = {stand_in[b]: b for b in range(256)} | {"ab": 256, "<|endoftext|>": 257}
            (directory / name).write_text(json.dumps(vocab))
        elif name in ("merges.txt", "vocab.bpe"):
            (directory / name).write_text("#version: 0.2\na b\n")
        elif name == "tokenizer_info.json":
            save_tokenizer(load_tokenizer_from_ranks(ranks, pattern=GPT2_PATTERN), directory)
            if "tokenizer.tiktoken" not in names:
                (directory / "tokenizer.tiktoken").unlink()
        elif name.endswith(".tiktoken") or name == "tokenizer.model":
            save_ranks(ranks, str(directory / name))


def load_tokenizer_from_ranks(ranks, pattern=LLAMA3_PATTERN):
    return Encoding("t", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})


@pytest.mark.parametrize("names, pattern, eot", [
    (["tokenizer.json"], LLAMA3_PATTERN, 257),
    (["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"], LLAMA3_PATTERN, 257),  # GPT-2's repo
    (["vocab.json", "merges.txt"], GPT2_PATTERN, 257),
    (["encoder.json", "vocab.bpe"], GPT2_PATTERN, 257),
    (["tokenizer.tiktoken", "tokenizer_info.json"], GPT2_PATTERN, 257),  # ours: the pattern is stated
    (["gpt2.tiktoken"], GPT2_PATTERN, 257),  # GPT-2's rank file: GPT-2's pattern, <|endoftext|> after the ranks
    (["tokenizer.model"], LLAMA3_PATTERN, 258),  # Llama-3's: <|begin_of_text|> first, then <|end_of_text|>
])
def test_each_layout_means_one_tokenizer(tmp_path, names, pattern, eot):
    write_layout(tmp_path, names)
    enc = load_hf_tokenizer(tmp_path)
    assert enc._pat_str == pattern and enc.eot_token == eot and enc.encode_ordinary("abc") == [256, 99]


@pytest.mark.parametrize("names, message", [
    (["tokenizer.tiktoken"], "tokenizer.tiktoken: without tokenizer_info.json"),  # pattern not stated: refused
    (["tokenizer_info.json"], "tokenizer_info.json: without tokenizer.tiktoken"),
    (["cl100k_base.tiktoken"], "cl100k_base.tiktoken: a rank file whose pattern and special tokens are not stated"),
    (["tokenizer.json", "gpt2.tiktoken"], "ambiguous tokenizer: both tokenizer.json and gpt2.tiktoken"),
    (["gpt2.tiktoken", "tokenizer.tiktoken", "tokenizer_info.json"], "ambiguous tokenizer"),
    (["vocab.json"], "no tokenizer files"),  # half of a layout
])
def test_unstated_or_ambiguous_layouts_are_refused(tmp_path, names, message):
    write_layout(tmp_path, names)
    with pytest.raises(UserError, match=message):
        tokenizer_layout(tmp_path)


def test_gpt2_rank_file_layout_is_gpt2(tmp_path):
    """A real gpt2.tiktoken in a model directory is GPT-2's tokenizer: hello world, <|endoftext|> = 50256."""
    (tmp_path / "gpt2.tiktoken").symlink_to(gpt2_rank_file())
    enc = load_hf_tokenizer(tmp_path)
    assert enc.encode_ordinary("hello world 12345") == [31373, 995, 17031, 2231] and enc.eot_token == 50256


# -----------------------------------------------------------------------------
# tokenizer.json written back

def test_written_tokenizer_json_matches_tokenizers_and_reads_back(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    ours = load_tokenizer(Path(__file__).resolve().parents[1] / "data" / "tokenizer.tiktoken")
    qwen_like = Encoding("q", pat_str=LLAMA3_PATTERN, mergeable_ranks=ours._mergeable_ranks, normalizer="NFC",
                         special_tokens={"<|endoftext|>": 511, "<|im_start|>": 512}, bos="<|im_start|>")
    for name, enc in (("ours", ours), ("qwen_like", qwen_like)):
        write_tokenizer_json(enc, tmp_path / name)
        reference = tokenizers.Tokenizer.from_file(str(tmp_path / name / "tokenizer.json"))
        back = load_hf_tokenizer(tmp_path / name)
        assert (back._mergeable_ranks, back._special_tokens, back._pat_str, back.eot_token, back.bos_token_id,
                back.normalizer) == (enc._mergeable_ranks, enc._special_tokens, enc._pat_str, enc.eot_token,
                                     enc.bos_token_id, enc.normalizer)
        bos = [] if enc.bos_token_id is None else [enc.bos_token_id]
        for text in gsm8k_texts(300) + awkward_texts(300):
            assert bos + enc.encode_ordinary(text) == reference.encode(text).ids, text
    assert merges_from_ranks({b"a": 0, b"b": 1, b"ab": 2, b"abb": 3}) == [(b"a", b"b"), (b"ab", b"b")]
