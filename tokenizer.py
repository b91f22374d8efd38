"""
The tokenizer: byte-level BPE, trained by our own code and run by tiktoken, fully offline. A door: it imports
nothing of the project but configurator.

A tokenizer is three things: ranks (token bytes -> id; a lower rank merges first), a pre-tokenisation pattern that
cuts text into pieces before any merge, and special tokens. nanoAFT keeps them in two files (TOKENIZER_FILES):

    tokenizer.tiktoken    tiktoken's rank-file format: a line per token, base64 of its bytes, a space, its rank
    tokenizer_info.json   {"pattern": regex, "special_tokens": {token: id}, "eot_token": token,
                           "bos_token": token or null, "normalizer": "NFC" or null}

Our own tokenizer has ranks 0..255 for the single bytes (so every string can be encoded), the merges in the order
they were learned, and one special token, EOT, right after the last merge; data/tokenizer.tiktoken ships as that
rank file alone, which load_tokenizer reads with our PATTERN. A tokenizer converted from another model (hf.py)
keeps that model's ids, pattern and special tokens; its vocabulary may lack some bytes (see Encoding).

Encode dataset text with `enc.encode_ordinary(text)`: it never produces special tokens, so a stray
"<|endoftext|>" inside a question is spelled out as ordinary text instead of ending the sequence.

Train a rank file:  python tokenizer.py --input=data.jsonl --vocab_size=1024 --out=out/tokenizer.tiktoken
(for .jsonl input the "question" and "answer" fields of each line are used).
"""

import base64
import binascii
import hashlib
import heapq
import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import regex  # a dependency of tiktoken itself; the same engine tiktoken's reference trainer splits with
import tiktoken
from tiktoken.core import raise_disallowed_special_token

from configurator import UserError, bounded, check_output, check_path, main, validate

EOT = "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.tiktoken", "tokenizer_info.json")
RANK_FILE, INFO_FILE = TOKENIZER_FILES

# GPT-4's pre-tokenisation pattern with one change: numbers are split into single digits (\p{N} one at a
# time) instead of runs of up to three. A tiny model learns column arithmetic far more easily when every
# number is spelled digit by digit with a fixed vocabulary of 10 digit tokens, rather than guessing which of
# a thousand 3-digit chunks a number was cut into (LLaMA and SmolLM split digits the same way).
PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)


def train_bpe(text: str, vocab_size: int, pattern: str = PATTERN, verbose: int = 0) -> dict[bytes, int]:
    """
    Learn byte-level BPE ranks from `text`: bytes 0..255, then merges until there are vocab_size ranks.

    Gives exactly the ranks of tiktoken._educational.bpe_train, which recounts every pair of every
    pre-token occurrence after each merge. Here each distinct pre-token is stored once with its frequency,
    pair counts are updated only in the pre-tokens a merge touches, and a heap finds the most frequent pair.
    Ties go, as in the reference (max over a Counter filled in reading order), to the pair that occurs
    first in the text: its position is (index of the first distinct pre-token holding it, byte offset).
    verbose > 0 prints a progress line every `verbose` merges.
    """
    if vocab_size < 256:
        raise UserError(f"vocab_size={vocab_size}: must be at least 256, one rank per byte value")
    ranks = {bytes([b]): b for b in range(256)}

    # Distinct pre-tokens in order of first appearance (Counter keeps insertion order), as lists of tokens.
    counts = Counter(regex.findall(pattern, text))
    words = [[bytes([b]) for b in word.encode("utf-8")] for word in counts]
    freqs = list(counts.values())

    stats: dict[tuple[bytes, bytes], int] = {}  # pair -> occurrences in the text (frequency weighted)
    where: dict[tuple[bytes, bytes], set[int]] = {}  # pair -> indices of the words that contain it
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            stats[pair] = stats.get(pair, 0) + freqs[i]
            where.setdefault(pair, set()).add(i)

    def first_position(pair):
        i = min(where[pair])
        offset = 0
        for left, right in zip(words[i], words[i][1:]):
            if (left, right) == pair:
                return i, offset
            offset += len(left)

    # Entries (-count, word index, byte offset, pair). An entry is trusted only if its count is the pair's
    # current count and its position is the pair's current first position; (-1, -1) marks a position not
    # yet computed. Every pair always has an entry whose position is not after its true one, so the first
    # trusted entry popped is the pair the reference picks. Byte offsets, unlike token indices, do not move
    # when a merge elsewhere in the word shortens it.
    heap = [(-count, *first_position(pair), pair) for pair, count in stats.items()]
    heapq.heapify(heap)

    while len(ranks) < vocab_size:
        while True:
            if not heap:
                raise UserError(f"text too small: no pair left to merge after {len(ranks)} of {vocab_size} ranks")
            neg_count, i, offset, pair = heapq.heappop(heap)
            if stats.get(pair) != -neg_count:
                continue  # stale: the pair's count changed since this entry was pushed
            position = first_position(pair)
            if position == (i, offset):
                break
            heapq.heappush(heap, (neg_count, *position, pair))

        token = pair[0] + pair[1]
        ranks[token] = len(ranks)

        touched = set()  # pairs whose count changed or that gained an occurrence (possibly at an earlier position)
        for i in list(where[pair]):
            word, merged = words[i], []
            j = 0
            while j < len(word):  # left to right, non-overlapping, like the reference
                if j + 1 < len(word) and word[j] == pair[0] and word[j + 1] == pair[1]:
                    merged.append(token)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            old_pairs, new_pairs = list(zip(word, word[1:])), list(zip(merged, merged[1:]))
            delta = Counter(new_pairs)
            delta.subtract(old_pairs)
            for p, d in delta.items():
                if d:
                    stats[p] = stats.get(p, 0) + d * freqs[i]
                    if stats[p] == 0:
                        del stats[p]
                    touched.add(p)
            for p in set(old_pairs) - set(new_pairs):
                where[p].discard(i)
                if not where[p]:
                    del where[p]
            for p in set(new_pairs) - set(old_pairs):
                where.setdefault(p, set()).add(i)
            # Pairs holding the new token are new, so counted above, unless these bytes were already a token
            # made by another split (never seen in practice); then a count may not change but a position can.
            touched.update(p for p in new_pairs if token in p)
            words[i] = merged
        for p in touched:
            if p in stats:
                heapq.heappush(heap, (-stats[p], -1, -1, p))

        if verbose and (len(ranks) - 256) % verbose == 0:
            print(f"merge {len(ranks) - 256}/{vocab_size - 256}: {token!r} seen {-neg_count} times")
    return ranks


# -----------------------------------------------------------------------------
# The files: a rank file, and an info file stating what the rank file alone cannot

def save_ranks(ranks: dict[bytes, int], path: str) -> None:
    """Write `ranks` in tiktoken's rank-file format, atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    os.replace(tmp, path)


def load_ranks(path: str) -> dict[bytes, int]:
    """Read a rank file, refusing anything that is not one whole: an empty file, a line that is not
    '<base64> <rank>', a repeated token or rank, a last line cut short (every writer ends each line with a
    newline). Our own parser: tiktoken.load caches by path and would not see later edits."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: tokenizer rank file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, not a tokenizer rank file") from None
    lines = data.split(b"\n")
    if not data.strip():
        raise UserError(f"{path}: empty tokenizer rank file")
    if lines[-1]:
        raise UserError(f"{path}:{len(lines)}: the file ends inside a line (truncated?): {lines[-1][:60]!r}")
    ranks: dict[bytes, int] = {}
    seen_ranks = set()
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            raise UserError(f"{path}:{number}: expected '<base64 token> <rank>', got {line[:60]!r}") from None
        if not token or token in ranks or rank in seen_ranks or rank < 0:
            raise UserError(f"{path}:{number}: duplicate token or rank, an empty token or a negative rank: "
                            f"{line[:60]!r}")
        ranks[token] = rank
        seen_ranks.add(rank)
    return ranks


class Encoding(tiktoken.Encoding):
    """A tiktoken Encoding that knows its end-of-text token (`eot_token`, whatever its spelling: "<|endoftext|>",
    "<|im_end|>", ...), the begin-of-text token the original tokenizer puts in front of every text, if any
    (`bos_token_id`), optionally normalises text to NFC first (Qwen2 does), and encodes text whose bytes have no
    token.

    Missing bytes: a byte-level vocabulary need not hold all 256 bytes (SmolLM2's lacks 21: control characters and
    bytes that never occur in UTF-8). tiktoken panics on such a byte. The reference tokenizer (the `tokenizers`
    library, BPE without unk_token) drops it: the text is cut into pieces by the pattern as usual, the byte is
    removed from its piece, and the rest of the piece is merged as if the byte had never been there (".<0x04>."
    becomes the token ".."). We do exactly that, and use tiktoken's own path whenever a text has no such byte.
    encode_ordinary and encode (hence their batch forms) do this; encode_to_numpy and encode_with_unstable do not."""

    def __init__(self, name, *, pat_str, mergeable_ranks, special_tokens, eot=EOT, bos=None, normalizer=None):
        for role, token in (("end-of-text", eot), ("begin-of-text", bos)):
            if token is not None and token not in special_tokens:
                raise UserError(f"{name}: {role} token {token!r} is not one of the special tokens "
                                f"{sorted(special_tokens)[:8]}")
        if normalizer not in (None, "NFC"):
            raise UserError(f"{name}: normalizer {normalizer!r} is not supported (only NFC)")
        clash = sorted(set(special_tokens.values()) & set(mergeable_ranks.values()))
        if clash:
            raise UserError(f"{name}: special token id {clash[0]} is also the rank of an ordinary token")
        try:
            super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        except ValueError as e:  # a pattern tiktoken's regex engine cannot compile
            raise UserError(f"{name}: {str(e).splitlines()[0]}") from None
        self.eot_name, self.bos_name, self.normalizer = eot, bos, normalizer
        self.missing_bytes = bytes(b for b in range(256) if bytes([b]) not in mergeable_ranks)
        self._missing_re = re.compile(b"[%s]" % re.escape(self.missing_bytes)) if self.missing_bytes else None
        self._pieces = regex.compile(pat_str)

    @property
    def eot_token(self):
        return self._special_tokens[self.eot_name]

    @property
    def bos_token_id(self):
        """The id the original tokenizer puts in front of every text, or None (GPT-2, Qwen2, SmolLM, ours)."""
        return None if self.bos_name is None else self._special_tokens[self.bos_name]

    def _prepare(self, text):
        """(text as the tokenizer sees it, whether it holds a byte without a token)."""
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        if self._missing_re is None:
            return text, False
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the same repair tiktoken makes before encoding
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            data = text.encode("utf-8")
        return text, self._missing_re.search(data) is not None

    def _encode_dropping_missing(self, text):
        ids = []
        for piece in self._pieces.findall(text):
            kept = piece.encode("utf-8").translate(None, self.missing_bytes)
            if kept:
                ids.extend(self._encode_single_piece(kept))
        return ids

    def encode_ordinary(self, text):
        text, missing = self._prepare(text)
        return self._encode_dropping_missing(text) if missing else super().encode_ordinary(text)

    def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all"):
        text, missing = self._prepare(text)
        if not missing:
            return super().encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        if disallowed_special == "all":
            disallowed_special = self.special_tokens_set - set(allowed_special)
        for token in disallowed_special:
            if token in text:
                raise_disallowed_special_token(token)
        if not allowed_special:
            return self._encode_dropping_missing(text)
        ids = []  # ordinary text between the allowed special tokens, as tiktoken cuts it
        specials = regex.compile("|".join(regex.escape(token) for token in sorted(allowed_special, key=len,
                                                                                     reverse=True)))
        start = 0
        for match in specials.finditer(text):
            ids += self._encode_dropping_missing(text[start:match.start()]) + [self._special_tokens[match.group()]]
            start = match.end()
        return ids + self._encode_dropping_missing(text[start:])

    def __getstate__(self):
        # tiktoken unpickles by calling __init__ with this dict, so it must carry our arguments too
        return {**super().__getstate__(), "eot": self.eot_name, "bos": self.bos_name, "normalizer": self.normalizer}


def build_encoding(ranks: dict[bytes, int], pattern: str = PATTERN, special_tokens: dict[str, int] | None = None,
                   name: str = "nanoaft", eot: str = EOT, bos: str | None = None, normalizer: str | None = None
                   ) -> Encoding:
    """An Encoding over `ranks`; by default the only special token is EOT, right after the last rank."""
    if special_tokens is None:
        special_tokens = {EOT: max(ranks.values()) + 1}
    return Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens, eot=eot, bos=bos,
                    normalizer=normalizer)


# tokenizer_info.json's fields: their types, and what they must be (for the error message). n_ranks, the number
# of lines of the rank file, catches a rank file cut at the end of a line; it and the normalizer may be left out.
INFO_KEYS = {"pattern": str, "special_tokens": dict, "eot_token": str, "bos_token": (str, type(None)),
             "normalizer": (str, type(None)), "n_ranks": (int, type(None))}
INFO_KEYS_TEXT = {"pattern": "a regular expression", "special_tokens": "an object {token: id}",
                  "eot_token": "the name of a special token", "bos_token": "the name of a special token or null",
                  "normalizer": "\"NFC\" or null", "n_ranks": "the number of ranks in the rank file"}
OPTIONAL_KEYS = ("normalizer", "n_ranks")


def _read_info(path):
    """tokenizer_info.json, checked field by field: one line naming the file (and line) of the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object with {', '.join(INFO_KEYS)}")
    for key, kinds in INFO_KEYS.items():
        value = info.get(key)
        if (key not in info and key not in OPTIONAL_KEYS) or not isinstance(value, kinds) or isinstance(value, bool):
            raise UserError(f"{path}: '{key}' must be {INFO_KEYS_TEXT[key]}, got {value!r}")
    unknown = sorted(set(info) - set(INFO_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(unknown)}")
    specials = info["special_tokens"]
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in specials.values()):
        raise UserError(f"{path}: 'special_tokens' must map each token to a non-negative integer id")
    for key in ("eot_token", "bos_token"):
        if info[key] is not None and info[key] not in specials:
            raise UserError(f"{path}: '{key}' {info[key]!r} is not one of its special_tokens {sorted(specials)[:8]}")
    if len(set(specials.values())) < len(specials):
        raise UserError(f"{path}: two special_tokens share an id")
    try:
        pattern = regex.compile(info["pattern"])
    except regex.error as e:
        raise UserError(f"{path}: 'pattern' is not a valid regular expression ({e})") from None
    if any(pattern.search(probe) and pattern.search(probe).group() == "" for probe in ("", "a", " ", "1", "\n", "a b")):
        raise UserError(f"{path}: 'pattern' matches an empty piece of text (the tokenizer would fail on it)")
    return info


def load_tokenizer(path) -> Encoding:
    """The tokenizer at `path`: a directory holding TOKENIZER_FILES, or a bare rank file (our PATTERN, and one
    special token, EOT, right after the last rank: how data/tokenizer.tiktoken ships)."""
    path = Path(path)
    if not path.is_dir():
        return build_encoding(load_ranks(str(path)), name=path.stem)
    ranks = load_ranks(str(path / RANK_FILE))
    info = _read_info(path / INFO_FILE)
    if info.get("n_ranks") not in (None, len(ranks)):
        raise UserError(f"{path / RANK_FILE}: {len(ranks)} ranks, but {INFO_FILE} says {info['n_ranks']} (truncated?)")
    clash = sorted(set(info["special_tokens"].values()) & set(ranks.values()))
    if clash:
        raise UserError(f"{path / INFO_FILE}: special token id {clash[0]} is also the rank of an ordinary token in "
                        f"{RANK_FILE}")
    return build_encoding(ranks, info["pattern"], info["special_tokens"], name=path.name or "tokenizer",
                          eot=info["eot_token"], bos=info["bos_token"], normalizer=info.get("normalizer"))


def save_tokenizer(enc: tiktoken.Encoding, directory) -> list[Path]:
    """Write `enc` as TOKENIZER_FILES in `directory`, so that load_tokenizer(directory) gives the same tokenizer.
    A plain tiktoken Encoding is saved with <|endoftext|> as its end-of-text token."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rank_path, info_path = directory / RANK_FILE, directory / INFO_FILE
    save_ranks(enc._mergeable_ranks, str(rank_path))
    info = {"pattern": enc._pat_str, "special_tokens": enc._special_tokens,
            "eot_token": getattr(enc, "eot_name", EOT), "bos_token": getattr(enc, "bos_name", None),
            "normalizer": getattr(enc, "normalizer", None), "n_ranks": len(enc._mergeable_ranks)}
    tmp = info_path.with_name(info_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, info_path)
    return [rank_path, info_path]


def fingerprint(path) -> str:
    """Short hash of a tokenizer's files (a directory's TOKENIZER_FILES, or a bare rank file), stored with what
    was made with it (tokenized data, candidates) to refuse mixing tokenizers."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in [path / name for name in TOKENIZER_FILES] if path.is_dir() else [path]:
        try:
            digest.update(file.read_bytes())
        except FileNotFoundError:
            raise UserError(f"{file}: tokenizer file not found") from None
    return digest.hexdigest()[:16]


def read_training_text(path: str) -> str:
    """Plain text as is; for .jsonl, each line's "question" and "answer" fields, one blank line between."""
    try:
        with open(path, encoding="utf-8") as f:
            if not path.endswith(".jsonl"):
                return f.read()
            texts = []
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts.append(row["question"] + "\n" + row["answer"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{path}:{number}: expected a JSON object with 'question' and 'answer'") from None
            return "\n\n".join(texts)
    except FileNotFoundError:
        raise UserError(f"{path}: input file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, not a text file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


@dataclass
class TokenizerConfig:
    input: str                       # training text: a .txt file, or a .jsonl file with question/answer fields
    vocab_size: int = bounded(1024, min=256)  # ranks to learn, bytes included (one per byte value); EOT comes on top
    out: str = "out/tokenizer.tiktoken"  # where to write the rank file
    verbose: int = bounded(100, min=0)  # print a progress line every this many merges (0: silent)


def train_tokenizer(config: TokenizerConfig) -> str:
    """Train on config.input, write config.out, and return the rank file's fingerprint. Every flag, the input and
    the output path are checked before the training starts."""
    validate(config)  # the command line did already; a notebook's TokenizerConfig(...) did not
    if not config.input.strip():
        raise UserError("--input is empty: give a .txt or .jsonl file of training text")
    check_output(config.out, "out", is_dir=False)
    check_path(config.input, "input")
    text = read_training_text(config.input)
    if not text.strip():
        raise UserError(f"{config.input}: no training text in it")
    try:
        ranks = train_bpe(text, config.vocab_size, verbose=config.verbose)
    except UserError as e:  # "text too small": say which text
        raise UserError(f"{config.input}: {e}") from None
    save_ranks(ranks, config.out)
    print(f"wrote {config.out}: {len(ranks)} ranks + EOT, fingerprint {fingerprint(config.out)}")
    return fingerprint(config.out)


if __name__ == "__main__":
    main(train_tokenizer, TokenizerConfig)
