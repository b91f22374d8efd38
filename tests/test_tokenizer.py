"""Tests of tokenizer.py: trainer parity with tiktoken's reference trainer, round trips, digits, nanoAFT's
tokenizer files (and one clear line for every broken one), vocabularies without a full byte alphabet."""

import json
import pickle
import random

import pytest
from tiktoken._educational import SimpleBytePairEncoding, bpe_train

from configurator import UserError
from tokenizer import (
    EOT,
    PATTERN,
    TOKENIZER_FILES,
    Encoding,
    TokenizerConfig,
    build_encoding,
    fingerprint,
    load_ranks,
    load_tokenizer,
    save_ranks,
    save_tokenizer,
    train_bpe,
    train_tokenizer,
)


def make_text(n_sentences=80, seed=0):
    """A few KB of word problems: varied English words, numbers of every length, punctuation, some unicode."""
    rng = random.Random(seed)
    names = ["Natalia", "Weng", "Betty", "José", "Zoë", "李雷", "Marguerite", "Olu"]
    verbs = ["sold", "bought", "baked", "collected", "gave away", "painted", "shipped", "counted"]
    things = ["clips", "apples", "books", "dollars", "minutes", "cookies", "emoji 🙂", "pencils", "tickets"]
    places = ["at school", "in the garden", "on Monday", "before lunch", "at the café", "during the week"]
    sentences = []
    for _ in range(n_sentences):
        a, b = rng.randint(0, 999), rng.randint(1, 99999)
        who, other = rng.choice(names), rng.choice(names)
        sentences.append(
            f"{who} {rng.choice(verbs)} {a} {rng.choice(things)} {rng.choice(places)}, and {other} "
            f"{rng.choice(verbs)} {b} more. How many did they have? {a}+{b} = <<{a}+{b}={a + b}>>{a + b}\n"
            f"#### {a + b}\n"
        )
    return "\n".join(sentences)


TEXT = make_text()


@pytest.fixture(scope="module")
def ranks():
    return train_bpe(TEXT, 400)


@pytest.fixture(scope="module")
def enc(ranks):
    return build_encoding(ranks)


@pytest.mark.parametrize("vocab_size", [300, 420])
def test_train_matches_tiktoken_reference_trainer(vocab_size):
    assert len(TEXT) > 5000
    ours = train_bpe(TEXT, vocab_size)
    reference = bpe_train(TEXT, vocab_size, PATTERN, visualise=None)
    assert list(ours.items()) == list(reference.items())


def random_lines(seed):
    rng = random.Random(seed)
    return "\n".join("".join(rng.choice("aab") for _ in range(rng.randint(3, 40))) for _ in range(60))


@pytest.mark.parametrize(
    "text, vocab_size",
    [
        # Breaking ties by token index instead of byte offset picks a different pair on this text.
        ("ccccbccacbbbcacbacbcbabca\nabcbaacbcaacbbcaacc", 270),
        (random_lines(seed=1), 320),
    ],
)
def test_train_matches_reference_on_tie_heavy_text(text, vocab_size):
    # One pre-token per line over a tiny alphabet: overlapping pairs ("aaa") and many equal counts.
    ours = train_bpe(text, vocab_size, pattern=r"[^\n]+|\n")
    reference = bpe_train(text, vocab_size, r"[^\n]+|\n", visualise=None)
    assert list(ours.items()) == list(reference.items())


def test_train_golden_values():
    single_bytes = {bytes([b]): b for b in range(256)}
    # Frequency first: " a" and "ab" occur twice, "xy" (read first) once; the tie goes to " a", read before "ab".
    assert train_bpe("xy ab ab", 258) == {**single_bytes, b" a": 256, b" ab": 257}
    # Ties (every pair once) go to the pair read first: "xy", then " y" (from " yx"), then " y" + "x".
    assert train_bpe("xy yx", 259) == {**single_bytes, b"xy": 256, b" y": 257, b" yx": 258}


def test_train_rejects_bad_sizes():
    with pytest.raises(UserError, match="vocab_size=255"):
        train_bpe(TEXT, 255)
    with pytest.raises(UserError, match="text too small"):
        train_bpe("ab", 258)  # only one pair exists


def test_train_prints_nothing_by_default(capsys):
    train_bpe("xy ab ab", 258)
    assert capsys.readouterr().out == ""


def test_encoding_matches_reference_encoder(ranks, enc):
    # tiktoken (Rust regex + BPE) against the educational Python encoder on the same ranks and pattern.
    reference = SimpleBytePairEncoding(pat_str=PATTERN, mergeable_ranks=ranks)
    text = make_text(20, seed=7) + " it's  \n\n x \t'LL 3.14 ñandú"
    assert enc.encode_ordinary(text) == reference.encode(text, visualise=None)


@pytest.mark.parametrize(
    "text",
    [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
        "emoji 🙂🚀, CJK 你好世界, accents éàüñ Ångström, ZWJ 👩‍👩‍👧",
        "  leading and trailing spaces \t\n\n",
        "",
    ],
)
def test_round_trip(enc, text):
    tokens = enc.encode_ordinary(text)
    assert enc.decode(tokens) == text
    assert enc.decode_bytes(tokens) == text.encode("utf-8")


def test_raw_bytes_round_trip(enc):
    # Ranks 0..255 are the bytes themselves, so bytes that are not valid UTF-8 survive decode_bytes.
    raw = bytes([0xFF, 0x00, 0xC3, 0x80, 0xFE])
    assert enc.decode_bytes(list(raw)) == raw


def test_eot_is_never_produced_from_text(ranks, enc):
    eot = len(ranks)
    assert enc.eot_token == eot and enc.n_vocab == len(ranks) + 1
    text = f"a question that mentions {EOT} in passing{EOT}"
    tokens = enc.encode_ordinary(text)
    assert eot not in tokens
    assert enc.decode(tokens) == text
    assert enc.encode(EOT, allowed_special="all") == [eot]
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken refuses special-token text unless told what to do with it


def test_numbers_are_single_digits(ranks, enc):
    tokens = enc.encode_ordinary("12345")
    assert [enc.decode([t]) for t in tokens] == ["1", "2", "3", "4", "5"]
    # TEXT is full of numbers, yet no learned token holds two digits.
    assert not any(sum(c.isdigit() for c in token.decode("utf-8", "replace")) > 1 for token in ranks)


def test_save_load_round_trip(tmp_path, ranks):
    path = str(tmp_path / "sub" / "tok.bpe")
    save_ranks(ranks, path)
    assert load_ranks(path) == ranks
    assert list((tmp_path / "sub").iterdir()) == [tmp_path / "sub" / "tok.bpe"]  # no temp file left behind
    assert (tmp_path / "sub" / "tok.bpe").read_text().splitlines()[:2] == ["AA== 0", "AQ== 1"]


def test_load_sees_edits_made_after_a_first_load(tmp_path, ranks):
    path = str(tmp_path / "tok.bpe")
    save_ranks(ranks, path)
    first, first_print = load_tokenizer(path), fingerprint(path)
    lines = (tmp_path / "tok.bpe").read_text().splitlines()
    (tmp_path / "tok.bpe").write_text("\n".join(lines[:300]) + "\n")
    second = load_tokenizer(path)
    assert (first.n_vocab, second.n_vocab) == (len(ranks) + 1, 301)
    assert second.eot_token == 300
    assert fingerprint(path) != first_print and len(first_print) == 16


def test_load_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.bpe"
    path.write_text("AA== 0\nAQ== 1\nnot-a-rank-line\n")
    with pytest.raises(UserError, match=r"bad\.bpe:3:"):
        load_ranks(str(path))
    path.write_text("AA== 0\n!!!! 1\n")
    with pytest.raises(UserError, match=r"bad\.bpe:2:"):
        load_ranks(str(path))
    path.write_text("AA== 0\nAQ== 0\n")
    with pytest.raises(UserError, match=r"bad\.bpe:2: duplicate"):
        load_ranks(str(path))
    with pytest.raises(UserError, match="missing.bpe"):
        load_ranks(str(tmp_path / "missing.bpe"))


def test_train_tokenizer_from_jsonl(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(50)]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = str(tmp_path / "tok.bpe")
    assert train_tokenizer(TokenizerConfig(input=str(data), vocab_size=262, out=out, verbose=0)) == fingerprint(out)
    enc = load_tokenizer(out)
    assert enc.n_vocab == 263
    assert enc.decode(enc.encode_ordinary("What is 7 + 7?")) == "What is 7 + 7?"
    data.write_text(json.dumps(rows[0]) + '\n{"question": "no answer"}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:2:"):
        train_tokenizer(TokenizerConfig(input=str(data), out=out, verbose=0))



@pytest.mark.parametrize("settings, message", [
    ({"verbose": -1}, "--verbose=-1: must be at least 0"),
    ({"vocab_size": 100}, "--vocab_size=100: must be at least 256"),
    ({"input": ""}, "--input is empty"),
    ({"input": "{tmp}/empty.txt"}, r"empty\.txt: no training text"),
    ({"input": "{tmp}/tiny.txt", "vocab_size": 300}, r"tiny\.txt: text too small"),
    ({"input": "{tmp}"}, "a directory, not a text file"),
    ({"input": "{tmp}/latin1.txt"}, r"latin1\.txt: not UTF-8"),
    ({"out": "{tmp}/a_file/tok.tiktoken"}, "a_file is a regular file, not a directory"),
    ({"out": "/proc/nanoaft_tokenizer/tok.tiktoken"}, "cannot write in /proc"),
    ({"out": "{tmp}"}, "a directory, not a file"),
])
def test_train_tokenizer_refuses_bad_settings_before_training(tmp_path, settings, message):
    (tmp_path / "text.txt").write_text(TEXT)
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "tiny.txt").write_text("ab")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "a_file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    args = {"input": str(tmp_path / "text.txt"), "out": str(tmp_path / "out" / "tok.tiktoken"), "verbose": 0,
            "vocab_size": 260, **{k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}}
    with pytest.raises(UserError, match=message) as error:
        train_tokenizer(TokenizerConfig(**args))
    assert "\n" not in str(error.value) and sorted(tmp_path.rglob("*")) == before


# -----------------------------------------------------------------------------
# nanoAFT's tokenizer files: tokenizer.tiktoken + tokenizer_info.json

def test_save_and_load_tokenizer_round_trip(tmp_path, ranks, enc):
    assert save_tokenizer(enc, tmp_path) == [tmp_path / name for name in TOKENIZER_FILES]
    info = json.loads((tmp_path / "tokenizer_info.json").read_text())
    assert info == {"pattern": PATTERN, "special_tokens": {EOT: len(ranks)}, "eot_token": EOT, "bos_token": None,
                    "normalizer": None, "n_ranks": len(ranks)}
    back = load_tokenizer(tmp_path)
    assert (back._mergeable_ranks, back.eot_token, back.bos_token_id, back.n_vocab) == (ranks, len(ranks), None,
                                                                                        len(ranks) + 1)
    # another model's tokenizer: its own pattern, ids, end- and begin-of-text tokens and normalizer survive too
    other = Encoding("other", pat_str=r"\S+|\s+", mergeable_ranks={bytes([b]): b + 3 for b in range(256)},
                     special_tokens={"<s>": 0, "</s>": 1, "<|im_end|>": 2}, eot="<|im_end|>", bos="<s>",
                     normalizer="NFC")
    save_tokenizer(other, tmp_path / "other")
    back = pickle.loads(pickle.dumps(load_tokenizer(tmp_path / "other")))
    assert (back._pat_str, back._special_tokens, back.eot_token, back.bos_token_id, back.normalizer) == (
        r"\S+|\s+", other._special_tokens, 2, 0, "NFC")
    assert back.encode_ordinary("e\u0301 x") == [ord("\u00e9".encode()[0:1]) + 3, ord("\u00e9".encode()[1:2]) + 3,
                                                  ord(" ") + 3, ord("x") + 3]  # NFC: é, not e + accent


def test_fingerprint_of_a_directory_covers_both_files(tmp_path, enc):
    save_tokenizer(enc, tmp_path)
    before = fingerprint(tmp_path)
    info = json.loads((tmp_path / "tokenizer_info.json").read_text())
    (tmp_path / "tokenizer_info.json").write_text(json.dumps(info | {"pattern": r"\S+|\s+"}))
    assert fingerprint(tmp_path) != before and len(before) == 16
    assert fingerprint(tmp_path / "tokenizer.tiktoken") != fingerprint(tmp_path)


def test_bare_rank_file_is_our_pattern_and_eot(tmp_path, ranks):
    save_ranks(ranks, str(tmp_path / "tokenizer.tiktoken"))
    enc = load_tokenizer(tmp_path / "tokenizer.tiktoken")
    assert enc._pat_str == PATTERN and enc._special_tokens == {EOT: len(ranks)} and enc.bos_token_id is None


def broken_files(tmp_path, ranks):
    """(what, file contents by name, the message that must name it): every way the two files can be broken."""
    good = tmp_path / "good"
    save_tokenizer(build_encoding(ranks), good)
    rank_text = (good / "tokenizer.tiktoken").read_text()
    info = json.loads((good / "tokenizer_info.json").read_text())
    info_text = json.dumps(info, indent=1)
    return [
        ("empty rank file", {"tokenizer.tiktoken": ""}, r"tokenizer\.tiktoken: empty"),
        ("blank rank file", {"tokenizer.tiktoken": "\n\n"}, r"tokenizer\.tiktoken: empty"),
        ("cut inside a line", {"tokenizer.tiktoken": rank_text[:-3]}, r"tokenizer\.tiktoken:400: the file ends inside"),
        ("cut inside the base64", {"tokenizer.tiktoken": rank_text[:11] + "\n"}, r"tokenizer\.tiktoken:2: expected"),
        ("cut after a line", {"tokenizer.tiktoken": rank_text[:14]}, r"tokenizer\.tiktoken: 2 ranks, but .* says 400"),
        ("a binary file", {"tokenizer.tiktoken": "\x00\xff\x00 \x01 \x02\n"}, r"tokenizer\.tiktoken:1: expected"),
        ("missing info file", {"tokenizer_info.json": None}, r"tokenizer_info\.json: not found"),
        ("missing rank file", {"tokenizer.tiktoken": None}, r"tokenizer\.tiktoken: tokenizer rank file not found"),
        ("empty info file", {"tokenizer_info.json": ""}, r"tokenizer_info\.json:1: invalid JSON"),
        ("cut info file", {"tokenizer_info.json": info_text[:40]}, r"tokenizer_info\.json:\d+: invalid JSON"),
        ("not an object", {"tokenizer_info.json": "[1]"}, r"tokenizer_info\.json: expected a JSON object"),
        ("no pattern", {"tokenizer_info.json": json.dumps({k: v for k, v in info.items() if k != "pattern"})},
         r"tokenizer_info\.json: 'pattern' must be"),
        ("bad pattern", {"tokenizer_info.json": json.dumps(info | {"pattern": "(["})},
         r"tokenizer_info\.json: 'pattern' is not a valid regular expression"),
        ("eot not special", {"tokenizer_info.json": json.dumps(info | {"eot_token": "</s>"})},
         r"tokenizer_info\.json: 'eot_token' '</s>' is not one of its special_tokens"),
        ("bos not special", {"tokenizer_info.json": json.dumps(info | {"bos_token": "<s>"})},
         r"tokenizer_info\.json: 'bos_token' '<s>' is not one of its special_tokens"),
        ("id not an int", {"tokenizer_info.json": json.dumps(info | {"special_tokens": {EOT: "400"}})},
         r"tokenizer_info\.json: 'special_tokens' must map"),
        ("id of a rank", {"tokenizer_info.json": json.dumps(info | {"special_tokens": {EOT: 7}})},
         r"tokenizer_info\.json: special token id 7 is also the rank of an ordinary token"),
        ("unknown field", {"tokenizer_info.json": json.dumps(info | {"eos": 1})}, r"unknown field\(s\) eos"),
        ("bad normalizer", {"tokenizer_info.json": json.dumps(info | {"normalizer": "NFKC"})}, r"'NFKC'"),
    ]


def test_every_broken_tokenizer_file_is_one_user_error_naming_it(tmp_path, ranks):
    for what, contents, message in broken_files(tmp_path, ranks):
        directory = tmp_path / what.replace(" ", "_")
        save_tokenizer(build_encoding(ranks), directory)
        for name, text in contents.items():
            if text is None:
                (directory / name).unlink()
            else:
                (directory / name).write_bytes(text.encode("latin-1") if what == "a binary file" else text.encode())
        with pytest.raises(UserError, match=message) as error:
            load_tokenizer(directory)
        assert "\n" not in str(error.value), what


# -----------------------------------------------------------------------------
# A vocabulary without a full byte alphabet (test_hf_tokenizer.py checks it against the tokenizers library)

def test_bytes_without_a_token_are_dropped_from_their_piece(ranks):
    partial = {token: rank for token, rank in ranks.items() if token not in (b"\x04", b"\xff")}
    enc = build_encoding(partial)
    assert enc.missing_bytes == b"\x04\xff"
    full = build_encoding(ranks)
    assert enc.encode_ordinary("\x04") == []
    assert enc.encode_ordinary("ab\x04cd") == full.encode_ordinary("abcd")  # one piece: merged as if never there
    assert enc.encode_ordinary("12 apples") == full.encode_ordinary("12 apples")  # tiktoken's own path
    assert enc.encode("x\x04" + EOT, allowed_special="all") == full.encode_ordinary("x") + [enc.eot_token]
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode("\x04" + EOT)
    assert enc.encode_ordinary("\ud800a\x04") == full.encode_ordinary("\ufffda")  # a lone surrogate, as tiktoken
