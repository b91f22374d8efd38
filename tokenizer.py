"""
The tokenizer: byte-level BPE, trained by our own code and run by tiktoken, fully offline.

A tokenizer is one rank file in tiktoken's format (a line per token: base64 of its bytes, a space, its rank).
Ranks 0..255 are the single bytes, so every string can be encoded; the merges follow in the order they were
learned. The end-of-text token EOT is a special token placed right after the last merge.

Encode dataset text with `enc.encode_ordinary(text)`: it never produces special tokens, so a stray
"<|endoftext|>" inside a question is spelled out as ordinary text instead of ending the sequence.

Train a rank file:  python tokenizer.py --input=data.jsonl --vocab_size=1024 --out=out/tokenizer.bpe
(for .jsonl input the "question" and "answer" fields of each line are used).
"""

import base64
import binascii
import hashlib
import heapq
import json
import os
from collections import Counter
from dataclasses import dataclass

import regex  # a dependency of tiktoken itself; the same engine tiktoken's reference trainer splits with
import tiktoken

from configurator import UserError, main

EOT = "<|endoftext|>"

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


def save_ranks(ranks: dict[bytes, int], path: str) -> None:
    """Write `ranks` in tiktoken's rank-file format, atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    os.replace(tmp, path)


def load_ranks(path: str) -> dict[bytes, int]:
    """Read a rank file. Our own parser: tiktoken.load caches by path and would not see later edits."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: tokenizer rank file not found") from None
    ranks: dict[bytes, int] = {}
    seen_ranks = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            raise UserError(f"{path}:{number}: expected '<base64 token> <rank>', got {line[:60]!r}") from None
        if token in ranks or rank in seen_ranks or rank < 0:
            raise UserError(f"{path}:{number}: duplicate token or rank, or negative rank: {line[:60]!r}")
        ranks[token] = rank
        seen_ranks.add(rank)
    return ranks


def build_encoding(
    ranks: dict[bytes, int], pattern: str = PATTERN, special_tokens: dict[str, int] | None = None, name: str = "nanoaft"
) -> tiktoken.Encoding:
    """A tiktoken Encoding over `ranks`; by default the only special token is EOT, right after the last rank."""
    if special_tokens is None:
        special_tokens = {EOT: max(ranks.values()) + 1}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens)


def load_tokenizer(path: str, pattern: str = PATTERN) -> tiktoken.Encoding:
    """The Encoding stored in rank file `path` (EOT id = last rank + 1)."""
    return build_encoding(load_ranks(path), pattern)


def fingerprint(path: str) -> str:
    """Short hash of the rank file's bytes, stored with tokenized data to refuse data from another tokenizer."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except FileNotFoundError:
        raise UserError(f"{path}: tokenizer rank file not found") from None


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


@dataclass
class TokenizerConfig:
    input: str                       # training text: a .txt file, or a .jsonl file with question/answer fields
    vocab_size: int = 1024           # ranks to learn, bytes included; the encoding adds EOT on top
    out: str = "out/tokenizer.bpe"   # where to write the rank file
    verbose: int = 100               # print a progress line every this many merges (0: silent)


def train_tokenizer(config: TokenizerConfig) -> str:
    """Train on config.input, write config.out, and return the rank file's fingerprint."""
    text = read_training_text(config.input)
    ranks = train_bpe(text, config.vocab_size, verbose=config.verbose)
    save_ranks(ranks, config.out)
    print(f"wrote {config.out}: {len(ranks)} ranks + EOT, fingerprint {fingerprint(config.out)}")
    return fingerprint(config.out)


if __name__ == "__main__":
    main(train_tokenizer, TokenizerConfig)
