"""
Foreign tokenizers from local files, converted to nanoAFT's own (tokenizer.Encoding, saved with
tokenizer.save_tokenizer), offline. Machine room: only hf.py uses this file.

A pretrained model only works with the exact tokenizer it was trained with. Every byte-level BPE tokenizer is
the same three things: ranks (token bytes -> id, merge priority), a pre-tokenisation regex, and special tokens.
A rank file alone holds only the first, so which layout a model directory has decides what the other two are;
they are stated here, never guessed (load_hf_tokenizer):

  files in the directory               pattern                        special tokens, end-of-text
  tokenizer.json                       from its pre_tokenizer         its added_tokens; eos named by
                                       (GPT-2; SmolLM's Digits;       tokenizer_config.json,
                                       Llama-3/Qwen2's Split regex)   special_tokens_map.json or config.json,
                                                                      else <|endoftext|>
  vocab.json + merges.txt              GPT-2's                        entries no merge makes (GPT-2's
  (or GPT-2's encoder.json + vocab.bpe)                               <|endoftext|>) and tokenizer_config.json's
  tokenizer.tiktoken +                 stated in tokenizer_info.json  stated in tokenizer_info.json
    tokenizer_info.json (nanoAFT's)
  gpt2.tiktoken (GPT-2's rank file)    GPT-2's                        <|endoftext|> right after the last rank
                                                                      (50256 in the real file)
  tokenizer.model (Llama-3's, a        Llama-3's                      tokenizer_config.json's, else Llama-3's
    tiktoken rank file)                                               256, right after the ranks

tokenizer.json comes before vocab.json + merges.txt before tokenizer.model, as in transformers (GPT-2's own
directory ships all of the first two). Refused, with a message: a rank file whose pattern is not stated
(tokenizer.tiktoken without tokenizer_info.json, any other *.tiktoken name), and a rank file next to another
layout (which one is meant is ambiguous). A byte-level vocabulary may lack some byte values (SmolLM2's lacks 21);
tokenizer.Encoding drops such bytes from the text exactly as the tokenizers library does.

Not supported, and refused with a message naming the file: sentencepiece models (Llama-2, Mistral: Unigram, or
BPE over "▁" pieces with byte fallback), WordPiece, BPE with dropout or subword prefixes, pre-tokenizers other
than the combinations GPT-2, Llama-3, Qwen2 and SmolLM use, normalizers other than NFC, an unk_token in a
vocabulary that lacks some bytes (the unknown token would have to be emitted; tokenizers drops the byte only
without one).
"""

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from configurator import UserError
from tokenizer import INFO_FILE, RANK_FILE, Encoding, load_ranks, load_tokenizer

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

# Files that make up a tokenizer in a Hugging Face directory (copied along with an exported model).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.model", "generation_config.json")
GPT2_RANK_FILE = "gpt2.tiktoken"


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
    if not ranks:
        raise UserError(f"{source}: no ordinary tokens in the vocabulary")
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


def _read_json(path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@contextmanager
def _malformed(source):
    """A file of the wrong shape (a list where an object belongs, a missing id, a string for a number) fails
    somewhere inside the reading code; this turns that into one line naming the file."""
    try:
        yield
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: not the structure expected ({type(e).__name__}: {e})") from None


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
    with _malformed(path):
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

def load_rank_file(path) -> Encoding:
    """GPT-2's rank file gpt2.tiktoken: GPT-2's pattern, and <|endoftext|> right after the last rank (50256)."""
    ranks = load_ranks(str(path))
    return Encoding(Path(path).name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                    special_tokens={"<|endoftext|>": max(ranks.values()) + 1})


def load_vocab_bpe(encoder_path, merges_path, eos_token=None) -> Encoding:
    """GPT-2's original files: encoder.json (stand-in string -> id) and vocab.bpe (a "#version" line, then one
    merge per line), the same formats as Hugging Face's vocab.json and merges.txt. They do not mark special
    tokens; the entries no merge makes that are longer than one byte are the special ones (GPT-2's
    <|endoftext|>). The end-of-text token is `eos_token`, else the directory's tokenizer_config.json's,
    else <|endoftext|>."""
    with _malformed(encoder_path):
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
        return Encoding(Path(encoder_path).parent.name or "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                        special_tokens=specials, eot=eos_token)


def load_llama3_model(path) -> Encoding:
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
    return Encoding(path.parent.name or "llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                    special_tokens=specials, eot=eos, bos=bos if bos in specials else None)


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


def load_tokenizer_json(path, eos_token=None) -> Encoding:
    """A Hugging Face tokenizer.json holding a byte-level BPE: model.vocab (stand-in strings -> ids) becomes
    the ranks, the pre_tokenizer becomes the regex, added_tokens become the special tokens. The end-of-text
    token is `eos_token`, else the one the directory's configs name, else <|endoftext|>. A vocabulary may lack
    some bytes (SmolLM2's lacks 21); tokenizer.Encoding then drops them from the text as tokenizers does."""
    path = Path(path)
    source = str(path)
    with _malformed(path):
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
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing and model.get("unk_token"):
            raise UserError(f"{source}: unk_token={model['unk_token']!r} with no token for byte(s) {missing[:8]}: "
                            f"unknown tokens are not supported (without an unk_token such bytes are dropped)")
        if eos_token is None:
            eos_token = _eos_token(path.parent, specials, source)
        bos = _bos_from_post_processor(data.get("post_processor"))
        return Encoding(path.parent.name or "tokenizer", pat_str=pattern, mergeable_ranks=ranks,
                        special_tokens=specials, eot=eos_token, bos=bos, normalizer=normalizer and "NFC")


def tokenizer_layout(directory) -> list[str]:
    """The files that hold the tokenizer of model directory `directory`, by the table in this file's docstring;
    a UserError when there are none, or when what they mean is not stated or ambiguous."""
    directory = Path(directory)
    present = {path.name for path in directory.iterdir() if path.is_file()} if directory.is_dir() else set()
    hf = next(([*files] for files in (("tokenizer.json",), ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"),
                                       ("tokenizer.model",)) if present.issuperset(files)), None)
    rank_files = sorted(name for name in present if name.endswith(".tiktoken"))
    unstated = [name for name in rank_files if name not in (RANK_FILE, GPT2_RANK_FILE)]
    if unstated:
        raise UserError(f"{directory / unstated[0]}: a rank file whose pattern and special tokens are not stated; "
                        f"name GPT-2's {GPT2_RANK_FILE}, or give nanoAFT's {RANK_FILE} its {INFO_FILE}")
    if (RANK_FILE in present) != (INFO_FILE in present):
        there, absent = (RANK_FILE, INFO_FILE) if RANK_FILE in present else (INFO_FILE, RANK_FILE)
        raise UserError(f"{directory / there}: without {absent} (nanoAFT's tokenizer is the two together; a GPT-2 "
                        f"rank file is named {GPT2_RANK_FILE})")
    layouts = [files for files in (hf, [RANK_FILE, INFO_FILE] if RANK_FILE in present else None,
                                   [GPT2_RANK_FILE] if GPT2_RANK_FILE in present else None) if files]
    if len(layouts) > 1:
        raise UserError(f"{directory}: ambiguous tokenizer: both {' + '.join(layouts[0])} and "
                        f"{' + '.join(layouts[1])}; keep one")
    if not layouts:
        raise UserError(f"{directory}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, encoder.json + "
                        f"vocab.bpe, tokenizer.model, {RANK_FILE} + {INFO_FILE} or {GPT2_RANK_FILE})")
    return layouts[0]


def load_hf_tokenizer(directory) -> Encoding:
    """The tokenizer of a model directory, in whichever layout `tokenizer_layout` finds."""
    directory = Path(directory)
    files = tokenizer_layout(directory)
    if files[0] == "tokenizer.json":
        return load_tokenizer_json(directory / files[0])
    if files[0] in ("vocab.json", "encoder.json"):
        return load_vocab_bpe(directory / files[0], directory / files[1])
    if files[0] == "tokenizer.model":
        return load_llama3_model(directory / files[0])
    if files[0] == GPT2_RANK_FILE:
        return load_rank_file(directory / files[0])
    return load_tokenizer(directory)


def copy_tokenizer_files(source, destination):
    """Copy the tokenizer files of directory `source` into `destination` (a checkpoint or exported model),
    so load_hf_tokenizer(destination) gives the same tokenizer. Returns the names copied."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    copied = [name for name in HF_TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, destination / name)
    return copied


# -----------------------------------------------------------------------------
# Back to Hugging Face: a tokenizer.json that the tokenizers library and transformers read

def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list equivalent to tiktoken ranks: for each multi-byte token in rank order, the two parts that
    byte-pair encoding of its bytes with only the lower ranks ends in."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[i] >= rank:
                raise UserError(f"token {token!r} (rank {rank}) cannot be built from tokens of lower rank; "
                                f"not a byte-pair vocabulary")
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def write_tokenizer_json(enc, directory) -> list[Path]:
    """Write tokenizer.Encoding `enc` as tokenizer.json (byte-level BPE, its pattern as a Split pre-tokenizer) and
    tokenizer_config.json (end- and begin-of-text names), the files transformers' AutoTokenizer reads.
    load_tokenizer_json reads them back as the same Encoding."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stand_in = {b: char for char, b in byte_level_alphabet().items()}
    spell = lambda token: "".join(stand_in[b] for b in token)  # noqa: E731
    specials = sorted(enc._special_tokens.items(), key=lambda item: item[1])
    bos = getattr(enc, "bos_name", None)
    normalizer = getattr(enc, "normalizer", None)
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for token, i in specials],
        "normalizer": {"type": normalizer} if normalizer else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None if bos is None else {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {bos: {"id": bos, "ids": [enc._special_tokens[bos]], "tokens": [bos]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  # special tokens in the vocabulary too: tokenizers gives an added token that is not there a new id
                  "vocab": dict(sorted([*((spell(token), rank) for token, rank in enc._mergeable_ranks.items()),
                                        *specials], key=lambda item: item[1])),
                  "merges": [[spell(a), spell(b)] for a, b in merges_from_ranks(enc._mergeable_ranks)]},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": getattr(enc, "eot_name", "<|endoftext|>"),
              "bos_token": bos, "clean_up_tokenization_spaces": False}
    paths = [directory / "tokenizer.json", directory / "tokenizer_config.json"]
    paths[0].write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
