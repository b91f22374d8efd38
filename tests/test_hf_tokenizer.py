"""Tests of hf_tokenizer.py: foreign tokenizer files as tiktoken, checked against the `tokenizers` library
(tokenizers trained inside the test) and against the real GPT-2 vocabulary shipped in openai-whisper."""

import importlib.util
import json
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
    Tokenizer,
    byte_level_alphabet,
    copy_tokenizer_files,
    load_hf_tokenizer,
    load_llama3_model,
    load_rank_file,
    load_vocab_bpe,
)
from tokenizer import load_ranks, save_ranks

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
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
    assert isinstance(enc, Tokenizer) and enc.eot_token == reference.token_to_id("<|endoftext|>") == 0
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
    assert im_end == 2 and enc.eot_token == im_end and enc.eos_token == "<|im_end|>"
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
    assert enc.bos_token == "<|im_start|>" and enc.bos_token_id == 1


def write_tokenizer_json(path, model=None, pre_tokenizer=None, normalizer=None):
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
    write_tokenizer_json(tmp_path / "tokenizer.json", **edit)
    with pytest.raises(UserError, match=message) as error:
        load_hf_tokenizer(tmp_path)
    assert "tokenizer.json" in str(error.value)


def test_merge_order_must_follow_ids(tmp_path):
    vocab = {char: i for i, char in enumerate(byte_level_alphabet())}
    vocab.update({"ab": 258, "abc": 257})  # "abc" = merge 1 gets a lower id than "ab" = merge 0
    write_tokenizer_json(tmp_path / "tokenizer.json", model={"type": "BPE", "vocab": vocab, "merges": ["a b", "ab c"]})
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


def merges_from_ranks(ranks):
    """The merge that made each multi-byte token: BPE of its bytes with only the lower ranks ends in two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            assert pair_ranks[i] < rank
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append(parts)
    return merges


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
