"""The committed tokenizer of the built-in task is exactly what data/make_tokenizer.py trains."""

from data import make_tokenizer
from tokenizer import load_ranks, load_tokenizer


def test_committed_tokenizer_is_reproducible(tmp_path):
    rebuilt = make_tokenizer.build(tmp_path / "tokenizer.tiktoken")
    assert rebuilt == load_ranks(str(make_tokenizer.PATH))


def test_committed_tokenizer_spells_numbers_digit_by_digit():
    enc = load_tokenizer(str(make_tokenizer.PATH))
    assert enc.n_vocab == make_tokenizer.VOCAB_SIZE + 1 and enc.eot_token == make_tokenizer.VOCAB_SIZE
    ids = enc.encode_ordinary("12 * 34 = 408")
    assert [enc.decode([t]) for t in ids if enc.decode([t]).strip().isdigit()] == list("1234408")
