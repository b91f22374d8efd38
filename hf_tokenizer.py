"""
Foreign tokenizers from local files, converted to tiktoken, offline.

A pretrained model only works with the exact tokenizer it was trained with. Every byte-level BPE tokenizer is
the same three things: ranks (token bytes -> id, merge priority), a pre-tokenisation regex, and special tokens.
This file reads them from the files models ship with and builds a `Tokenizer` (a tiktoken.Encoding):

- a tiktoken rank file (GPT-2's gpt2.tiktoken; our own tokenizer.tiktoken is read by tokenizer.py);
- GPT-2's original encoder.json + vocab.bpe (Hugging Face calls them vocab.json + merges.txt);
- a Llama-3 tokenizer.model (a tiktoken rank file, not a sentencepiece model);
- a Hugging Face tokenizer.json whose model is byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM).

Which token ends a text is read from the files (tokenizer_config.json, special_tokens_map.json, config.json),
never assumed. tiktoken's own `eot_token` is hard-wired to "<|endoftext|>", while nanoAFT uses `enc.eot_token`
everywhere, so `Tokenizer.eot_token` returns the configured end-of-sequence token instead.

Not supported, and refused with a message naming the file: sentencepiece models (Llama-2, Mistral: Unigram, or
BPE over "▁" pieces with byte fallback), WordPiece, BPE with dropout or subword prefixes, pre-tokenizers other
than the combinations GPT-2, Llama-3, Qwen2 and SmolLM use, normalizers other than NFC.
"""

import json
import shutil
import unicodedata
from pathlib import Path

import tiktoken

from configurator import UserError
from tokenizer import load_ranks

# GPT-2's pre-tokenisation regex, also what the `tokenizers` library's ByteLevel(use_regex=True) applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SmolLM and StarCoder first cut every digit out on its own (the Digits pre-tokenizer), then run GPT-2's regex
# on the text between the digits. As one regex: a digit alone, and a run of whitespace that ends right before a
# digit stays whole (within its stretch it ended the text, where GPT-2's `\s+(?!\S)` takes the whole run).
DIGITS_GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""
)

# Llama-3's regex (its tokenizer.model carries ranks only).
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)

# Llama-3's special tokens, ids right after the ranks, for a bare tokenizer.model with no tokenizer_config.json.
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>", *(f"<|reserved_special_token_{i}|>" for i in range(5, 251)),
]

# Files that make up a tokenizer in a Hugging Face directory (copied along with a model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.model", "generation_config.json")


class Tokenizer(tiktoken.Encoding):
    """A tiktoken Encoding that knows its end-of-sequence token (and the begin-of-sequence token the original
    tokenizer prepends, if any), and optionally normalises text to NFC before encoding, as Qwen2's does
    (in encode and encode_ordinary, hence their batch forms; not in encode_to_numpy).
    `eot_token` is the id of `eos_token`, whatever its spelling ("<|endoftext|>", "<|im_end|>", "</s>", ...)."""

    def __init__(self, name, *, pat_str, mergeable_ranks, special_tokens, eos_token, bos_token=None,
                 normalizer=None):
        for role, token in (("end-of-sequence", eos_token), ("begin-of-sequence", bos_token)):
            if token is not None and token not in special_tokens:
                raise UserError(f"{name}: {role} token {token!r} is not one of the special tokens "
                                f"{sorted(special_tokens)[:8]}")
        if normalizer not in (None, "NFC"):
            raise UserError(f"{name}: normalizer {normalizer!r} is not supported (only NFC)")
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.normalizer = normalizer

    @property
    def eot_token(self):
        return self._special_tokens[self.eos_token]

    @property
    def bos_token_id(self):
        """The id the original tokenizer puts in front of every text, or None (GPT-2, Qwen2, SmolLM)."""
        return None if self.bos_token is None else self._special_tokens[self.bos_token]

    def _normalize(self, text):
        return unicodedata.normalize(self.normalizer, text) if self.normalizer else text

    def encode_ordinary(self, text):
        return super().encode_ordinary(self._normalize(text))

    def encode(self, text, **kwargs):
        return super().encode(self._normalize(text), **kwargs)

    def __getstate__(self):
        # tiktoken unpickles by calling __init__ with this dict, so it must carry our arguments too
        return {**super().__getstate__(), "eos_token": self.eos_token, "bos_token": self.bos_token,
                "normalizer": self.normalizer}


# -----------------------------------------------------------------------------
# GPT-2's byte-level alphabet: every byte has a printable stand-in character, so that vocabularies and merge
# lists can be stored as text. Printable Latin-1 characters stand for themselves; the 68 others (control
# characters, space, DEL, no-break space, soft hyphen) are shifted to U+0100 and up, in byte order.

def byte_level_alphabet() -> dict[str, int]:
    """The stand-in character of every byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in stand_in]
    for n, b in enumerate(shifted):
        stand_in[b] = chr(256 + n)
    return {char: b for b, char in stand_in.items()}


def ranks_from_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], specials: dict[str, int],
                   source: str) -> dict[bytes, int]:
    """The tiktoken ranks of a byte-level BPE given as a vocabulary of stand-in strings and a merge list.

    tiktoken merges, at every step, the adjacent pair whose concatenation has the lowest rank; the original
    applies the earliest merge of its list. For that to pick the same merges, the ids of the merge results must
    grow with the merge order and every multi-byte token must be the result of a merge; both are checked here
    (the tests check the outcome against the tokenizers library). Ids stay as they are: they index the model's
    embedding. Special tokens are left out of the ranks."""
    alphabet = byte_level_alphabet()
    ranks: dict[bytes, int] = {}
    for token, rank in vocab.items():
        if token in specials:
            continue
        try:
            ranks[bytes(alphabet[char] for char in token)] = rank
        except KeyError:
            raise UserError(f"{source}: token {token!r} (id {rank}) is not in GPT-2's byte-level alphabet; "
                            f"only byte-level BPE is supported") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UserError(f"{source}: no token for byte(s) {missing[:8]}: not a byte-level vocabulary")
    merged, last = set(), -1
    for number, (left, right) in enumerate(merges):
        product = left + right
        if left not in vocab or right not in vocab or product not in vocab:
            raise UserError(f"{source}: merge {number} ({left!r} {right!r}) uses or makes a token not in the vocab")
        if vocab[product] <= last:
            raise UserError(f"{source}: merge {number} ({left!r} {right!r}) makes id {vocab[product]}, not above "
                            f"the previous merge's {last}; ranks would not follow the merge order")
        last = vocab[product]
        merged.add(product)
    for token, rank in vocab.items():
        if len(token) > 1 and token not in merged and token not in specials:
            raise UserError(f"{source}: token {token!r} (id {rank}) is made by no merge; tiktoken could produce it "
                            f"where the original tokenizer does not")
    return ranks


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None


def _parse_merges(lines, source):
    """Merges as (left, right) pairs from "left right" strings (older files) or [left, right] lists."""
    merges = []
    for number, line in enumerate(lines):
        pair = line.split(" ") if isinstance(line, str) else line
        if len(pair) != 2:
            raise UserError(f"{source}: merge {number} is {line!r}, expected two tokens")
        merges.append(tuple(pair))
    return merges


# -----------------------------------------------------------------------------
# Which token ends a sequence: the files say, in the order Hugging Face's own loaders give them precedence.

def _token_content(value):
    """An eos/bos entry is a string or an AddedToken dict {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _special_tokens_from_config(directory) -> dict[str, int]:
    """The added tokens tokenizer_config.json declares ({"added_tokens_decoder": {id: {"content": ...}}})."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    decoder = _read_json(path).get("added_tokens_decoder") or {}
    return {entry["content"]: int(token_id) for token_id, entry in decoder.items()}


def _named_token(directory, role, specials):
    """The special token named as `role` ("eos_token", "bos_token") by tokenizer_config.json or
    special_tokens_map.json, or given as an id (`role`_id) by config.json / generation_config.json; else None."""
    directory = Path(directory)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            token = _token_content(_read_json(directory / name).get(role))
            if token:
                return token
    by_id = {token_id: token for token, token_id in specials.items()}
    for name in ("config.json", "generation_config.json"):
        if (directory / name).is_file():
            token_id = _read_json(directory / name).get(role + "_id")
            if isinstance(token_id, list):
                token_id = token_id[0] if token_id else None
            if token_id in by_id:
                return by_id[token_id]
    return None


def _eos_token(directory, specials, source, default="<|endoftext|>"):
    token = _named_token(directory, "eos_token", specials)
    if token is None and default in specials:
        token = default
    if token is None:
        raise UserError(f"{source}: no end-of-sequence token; name one as eos_token in "
                        f"{Path(directory) / 'tokenizer_config.json'}")
    return token


# -----------------------------------------------------------------------------
# The loaders

def load_rank_file(path, pattern=GPT2_PATTERN, special_tokens=None, eos_token="<|endoftext|>") -> Tokenizer:
    """A tiktoken rank file (GPT-2's gpt2.tiktoken). Its special tokens are not in the file: by default the
    only one is `eos_token`, right after the last rank (where GPT-2 has <|endoftext|> = 50256)."""
    ranks = load_ranks(str(path))
    if special_tokens is None:
        special_tokens = {eos_token: max(ranks.values()) + 1}
    return Tokenizer(Path(path).name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens,
                     eos_token=eos_token)


def load_vocab_bpe(encoder_path, merges_path, eos_token=None) -> Tokenizer:
    """GPT-2's original files: encoder.json (stand-in string -> id) and vocab.bpe (a "#version" line, then one
    merge per line), the same formats as Hugging Face's vocab.json and merges.txt. They do not mark special
    tokens; the entries no merge makes that are longer than one byte are the special ones (GPT-2's
    <|endoftext|>). The end-of-sequence token is `eos_token`, else the directory's tokenizer_config.json's,
    else <|endoftext|>."""
    vocab = _read_json(encoder_path)
    try:
        lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{merges_path}: not found") from None
    merges = _parse_merges([line for line in lines if line and not line.startswith("#version")], merges_path)
    made = {left + right for left, right in merges}
    specials = {token: i for token, i in vocab.items() if len(token) > 1 and token not in made}
    specials.update(_special_tokens_from_config(Path(encoder_path).parent))
    ranks = ranks_from_bpe(vocab, merges, specials, str(encoder_path))
    if eos_token is None:
        eos_token = _eos_token(Path(encoder_path).parent, specials, str(encoder_path))
    return Tokenizer(Path(encoder_path).parent.name or "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                     special_tokens=specials, eos_token=eos_token)


def load_llama3_model(path) -> Tokenizer:
    """Llama-3's tokenizer.model: a tiktoken rank file, used with Llama-3's regex. The special tokens come from
    tokenizer_config.json beside it when there is one, else Llama-3's published layout (ids right after the
    ranks); a sentencepiece tokenizer.model (Llama-2 and older) is refused."""
    path = Path(path)
    try:
        head = path.read_bytes()[:64]
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    if not head.split(b"\n")[0].split(b" ")[-1].strip().isdigit():
        raise UserError(f"{path}: a sentencepiece model (Llama-2 style), not a tiktoken rank file; "
                        f"sentencepiece tokenizers are not supported")
    ranks = load_ranks(str(path))
    specials = _special_tokens_from_config(path.parent)
    if not specials:
        first = max(ranks.values()) + 1
        specials = {token: first + i for i, token in enumerate(LLAMA3_SPECIALS)}
    eos = _eos_token(path.parent, specials, str(path), default="<|end_of_text|>")
    bos = _named_token(path.parent, "bos_token", specials) or "<|begin_of_text|>"
    return Tokenizer(path.parent.name or "llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                     special_tokens=specials, eos_token=eos, bos_token=bos if bos in specials else None)


def _pre_tokenizer_pattern(pre, source):
    """The single regex equivalent to a tokenizer.json pre_tokenizer, for the byte-level forms in use:
    ByteLevel(use_regex) (GPT-2); Split(regex, Isolated) then ByteLevel (Llama-3, Qwen2); Digits(individual)
    then ByteLevel(use_regex) (SmolLM, StarCoder)."""
    pre = pre or {}
    steps = (pre.get("pretokenizers") or [{}]) if pre.get("type") == "Sequence" else [pre]
    last = steps[-1]
    if last.get("type") != "ByteLevel":
        raise UserError(f"{source}: pre_tokenizer {json.dumps(pre)[:120]} does not end with ByteLevel; "
                        f"only byte-level BPE is supported")
    if last.get("add_prefix_space"):
        raise UserError(f"{source}: ByteLevel add_prefix_space=true is not supported")
    first = [step.get("type") for step in steps[:-1]]
    use_regex = last.get("use_regex", True)
    if first == [] and use_regex:
        return GPT2_PATTERN
    if first == ["Digits"] and steps[0].get("individual_digits") and use_regex:
        return DIGITS_GPT2_PATTERN
    if first == ["Split"] and not use_regex:
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if regex and split.get("behavior") == "Isolated" and not split.get("invert"):
            return regex
    raise UserError(f"{source}: pre_tokenizer {' + '.join(first + ['ByteLevel'])} (use_regex={use_regex}) is not "
                    f"one of the supported forms (GPT-2, Llama-3/Qwen2 Split regex, SmolLM Digits)")


def _bos_from_post_processor(post):
    """The special token a TemplateProcessing post-processor puts before every single text, or None."""
    if not post:
        return None
    for step in post.get("processors", [post]):
        if step.get("type") == "TemplateProcessing" and step.get("single"):
            first = step["single"][0]
            if "SpecialToken" in first:
                return first["SpecialToken"]["id"]
    return None


def load_tokenizer_json(path, eos_token=None) -> Tokenizer:
    """A Hugging Face tokenizer.json holding a byte-level BPE: model.vocab (stand-in strings -> ids) becomes
    the ranks, the pre_tokenizer becomes the regex, added_tokens become the special tokens. The end-of-sequence
    token is `eos_token`, else the one the directory's configs name, else <|endoftext|>."""
    path = Path(path)
    source = str(path)
    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{source}: model type {model.get('type')!r} is not supported (only byte-level BPE)")
    if model.get("byte_fallback"):
        raise UserError(f"{source}: BPE with byte_fallback (a sentencepiece-style tokenizer) is not supported")
    for option in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise UserError(f"{source}: BPE option {option}={model[option]!r} is not supported")
    normalizer = data.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise UserError(f"{source}: normalizer {json.dumps(normalizer)[:120]} is not supported (only NFC)")
    pattern = _pre_tokenizer_pattern(data.get("pre_tokenizer"), source)

    specials = {entry["content"]: entry["id"] for entry in data.get("added_tokens") or []}
    specials.update(_special_tokens_from_config(path.parent))
    ranks = ranks_from_bpe(model.get("vocab") or {}, _parse_merges(model.get("merges") or [], source), specials,
                           source)
    if eos_token is None:
        eos_token = _eos_token(path.parent, specials, source)
    return Tokenizer(path.parent.name or "tokenizer", pat_str=pattern, mergeable_ranks=ranks,
                     special_tokens=specials, eos_token=eos_token,
                     bos_token=_bos_from_post_processor(data.get("post_processor")),
                     normalizer=None if normalizer is None else "NFC")


def load_hf_tokenizer(directory) -> Tokenizer:
    """The tokenizer of a model directory, from the first of: tokenizer.json; vocab.json + merges.txt
    (or encoder.json + vocab.bpe); a Llama-3 tokenizer.model."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer_json(directory / "tokenizer.json")
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (directory / vocab).is_file() and (directory / merges).is_file():
            return load_vocab_bpe(directory / vocab, directory / merges)
    if (directory / "tokenizer.model").is_file():
        return load_llama3_model(directory / "tokenizer.model")
    raise UserError(f"{directory}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, "
                    f"encoder.json + vocab.bpe or tokenizer.model)")


def copy_tokenizer_files(source, destination):
    """Copy the tokenizer files of directory `source` into `destination` (a checkpoint or exported model),
    so load_hf_tokenizer(destination) gives the same tokenizer. Returns the names copied."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, destination / name)
    return copied
