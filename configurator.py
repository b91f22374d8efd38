"""
Command-line configuration of the dataclass configs every script declares.

A script describes its settings as a dataclass, one field per line with a trailing comment, and runs as

    if __name__ == "__main__":
        main(train, TrainConfig)

so `python train_sft.py --lr=1e-4 --compile` overrides two fields, while a notebook calls `train(TrainConfig(lr=1e-4))`
without any command line at all. Overrides are `--key=value`, parsed against the field's type: int, float, str,
bool (true/false/1/0/yes/no, or `--key` alone for true) and Optional[...] of those ("none" means None).
A field can restrict its values: `field(default=..., metadata={"choices": (...)})`, or a range with
`bounded(default, min=..., max=..., above=...)` (inclusive min / max, exclusive `above`). `validate(cfg)`
checks every field of a config against its type, its choices and its range, and refuses NaN and infinity in
every float field; the train functions call it first, so a config built in a notebook is checked like the
command line. Nothing is evaluated: a value is converted by its type or rejected. A mistake raises `UserError`,
whose one-line message names the flag; `main` prints it and exits with status 2. `check_output(path, flag)`
refuses an output path that cannot be written, before any work, for every script that writes one, and
`write_output` writes it at the end, whole or not at all; `check_input` refuses an input path that is empty or
names nothing.
"""

import dataclasses
import difflib
import inspect
import io
import math
import os
import sys
import tempfile
import tokenize
import types
import typing
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (a bad flag, file or checkpoint). Its message is one line naming the culprit."""


FLOAT32_MAX = 3.4028234663852886e38
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _unwrap_optional(tp):
    """(inner type, optional?) for X, Optional[X] and X | None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp):
    inner, optional = _unwrap_optional(tp)
    name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


def _convert(flag, text, tp):
    """The value of `text` as type `tp`, or a UserError naming the flag and the expected type."""
    inner, optional = _unwrap_optional(tp)
    if optional and text.lower() == "none":
        return None
    if inner is bool:
        if text.lower() in BOOLEANS:
            return BOOLEANS[text.lower()]
    elif inner is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif inner is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif inner is str:
        return text
    else:
        # A field of another type (a list, a nested config) is a script's own business, not the command line's.
        raise UserError(f"--{flag} cannot be set from the command line (its type is {_type_name(tp)})")
    expected = "bool (true/false/1/0/yes/no)" if inner is bool else inner.__name__
    if optional:
        expected += " or none"
    raise UserError(f"invalid value {text!r} for --{flag}: expected {expected}")


def _field_comments(config_cls):
    """{field name: its trailing comment}, read from the source of the class and its bases; a class without
    source (typed into a REPL) simply has no comments."""
    comments = {}
    for klass in config_cls.__mro__:  # subclass first, so an overriding field keeps its own comment
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        # tokenize, not a regex: a '#' inside a string default is not a comment.
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                name = tok.line.split(":", 1)[0].strip()
                if name.isidentifier():
                    comments.setdefault(name, tok.string.lstrip("#").strip())
    return comments


def _settable_fields(config_cls):
    hints = typing.get_type_hints(config_cls)  # resolves string annotations (`from __future__ import annotations`)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(config_cls) if f.init}


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def format_help(config_cls):
    """One line per field: --name=TYPE, its default, its allowed choices and its comment."""
    comments = _field_comments(config_cls)
    lines = [f"usage: --key=value ... ({config_cls.__name__}; bools also accept --key alone)"]
    for name, (f, tp) in _settable_fields(config_cls).items():
        default = _default(f)
        text = f"  --{name}={_type_name(tp)}"
        text += "  (required)" if default is dataclasses.MISSING else f"  (default: {default!r})"
        if "choices" in f.metadata:
            text += f"  [{', '.join(map(str, f.metadata['choices']))}]"
        limits = [f"{sign} {f.metadata[key]}" for key, sign in (("min", ">="), ("above", ">"), ("max", "<="))
                  if key in f.metadata]
        if limits:
            text += f"  [{', '.join(limits)}]"
        if name in comments:
            text += f"  # {comments[name]}"
        lines.append(text)
    return "\n".join(lines)


def parse_args(config_cls, argv):
    """An instance of `config_cls` with the `--key=value` overrides in `argv` applied.

    `--help` / `-h` prints every field and raises SystemExit(0). Anything else wrong raises UserError.
    """
    known = _settable_fields(config_cls)
    overrides = {}
    for arg in argv:
        if arg in ("--help", "-h"):
            print(format_help(config_cls))
            raise SystemExit(0)
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}: settings are given as --key=value")
        key, has_value, text = arg[2:].partition("=")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean --{close[0]}?" if close else "see --help for the valid flags"
            raise UserError(f"unknown flag --{key}; {hint}")
        if key in overrides:
            raise UserError(f"--{key} is given twice")
        f, tp = known[key]
        if not has_value:
            if _unwrap_optional(tp)[0] is not bool:
                raise UserError(f"--{key} needs a value: --{key}=<{_type_name(tp)}>")
            text = "true"
        value = _convert(key, text, tp)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"invalid value {text!r} for --{key}: choose one of {', '.join(map(str, choices))}")
        overrides[key] = value
    missing = [name for name, (f, _) in known.items() if name not in overrides and _default(f) is dataclasses.MISSING]
    if missing:
        raise UserError(f"missing required flag(s): {', '.join('--' + name for name in missing)}")
    config = config_cls(**overrides)
    validate(config)
    return config


def bounded(default, min=None, max=None, above=None):
    """A dataclass field whose value must be >= min, <= max and > above (those given): checked by `validate`."""
    limits = {"min": min, "max": max, "above": above}
    return dataclasses.field(default=default, metadata={k: v for k, v in limits.items() if v is not None})


def validate(cfg):
    """Refuse (UserError naming the flag) a config field of the wrong type, outside its choices or range, or a
    float that is NaN or infinite. Returns nothing and changes nothing: the caller's config stays as it is."""
    for name, (f, tp) in _settable_fields(type(cfg)).items():
        value, (inner, optional) = getattr(cfg, name), _unwrap_optional(tp)
        if value is None and optional:
            continue
        if inner in (int, float, bool, str):
            fits = isinstance(value, inner) and not (inner is int and isinstance(value, bool))
            if inner is float and isinstance(value, int) and not isinstance(value, bool):
                fits = True
            if not fits:
                raise UserError(f"--{name}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name}={value}: must be a finite number")
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:  # tensors hold it as float32: inf there
            raise UserError(f"--{name}={value}: too large (at most {FLOAT32_MAX:.3g}, float32's range)")
        if isinstance(value, int) and not isinstance(value, bool) and not -2 ** 63 <= value < 2 ** 63:
            raise UserError(f"--{name}={value}: too large for a 64-bit integer")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"--{name}={value}: choose one of {', '.join(map(str, choices))}")
        if "min" in f.metadata and value < f.metadata["min"]:
            raise UserError(f"--{name}={value}: must be at least {f.metadata['min']}")
        if "max" in f.metadata and value > f.metadata["max"]:
            raise UserError(f"--{name}={value}: must be at most {f.metadata['max']}")
        if "above" in f.metadata and value <= f.metadata["above"]:
            raise UserError(f"--{name}={value}: must be greater than {f.metadata['above']}")


def check_path(path, flag=None):
    """Refuse a path the system cannot even look up (a NUL byte, a name too long): a UserError, not an OSError."""
    try:
        os.stat(path)
    except ValueError as e:
        raise UserError(f"{'--' + flag + '=' if flag else ''}{str(path)[:200]!r}: not a usable path ({e})") from None
    except OSError as e:
        if not isinstance(e, (FileNotFoundError, NotADirectoryError)):
            raise UserError(f"{'--' + flag + '=' if flag else ''}{str(path)[:200]}: {e.strerror or e}") from None
    return Path(path)


def check_output(path, flag, is_dir=True):
    """Refuse, before any work, an output path that cannot be written: empty, under a regular file, a file where a
    directory is wanted (or the reverse), or in a place where a file cannot be created. Writability is tested by
    creating and removing a file in `path` (a directory) or beside it, or else in its nearest existing parent, so
    nothing is left behind: no file, and no directory that did not exist. Returns `path` as a Path.
    `flag` names the setting in the message (out_dir for --out_dir)."""
    if not str(path).strip():
        raise UserError(f"--{flag} is empty: give a {'directory' if is_dir else 'file'} path")
    path = check_path(path, flag)
    existing = path
    while not existing.exists() and existing != existing.parent:  # the nearest part of the path that exists
        existing = existing.parent
    if existing == path:
        if is_dir and not path.is_dir():
            raise UserError(f"--{flag}={path}: a {'regular file' if path.is_file() else 'non-directory'}, "
                            f"not a directory")
        if not is_dir and path.is_dir():
            raise UserError(f"--{flag}={path}: a directory, not a file")
        if not is_dir:
            existing = path.parent
    elif not existing.is_dir():
        raise UserError(f"--{flag}={path}: {existing} is a regular file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--{flag}={path}: cannot write in {existing} ({e.strerror or e})") from None
    return path


def write_output(path, text):
    """Write `text` to the file `path` whole or not at all: into a temporary file beside it, renamed into place
    (creating the directories check_output accepted as missing). A failed write (a full disk) is a UserError
    naming the file and leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None


def check_input(path, flag, shipped=False):
    """Refuse, before any work, an input path that is empty (which would quietly mean the current directory) or
    that does not exist; the message names the flag. Returns `path` as a Path. `shipped`: a relative path that does
    not exist from here is looked up in the repository too (a file that ships with it, such as data/'s)."""
    if not str(path).strip():
        raise UserError(f"--{flag} is empty: give a path")
    check_path(path, flag)
    here, repository = Path(path), Path(__file__).resolve().parent / path
    if not here.exists() and shipped and not here.is_absolute() and repository.exists():
        return repository
    if not here.exists():
        raise UserError(f"--{flag}={path}: no such file or directory")
    return here


def main(fn, config_cls, argv=None):
    """Run `fn(config)` with the config parsed from `argv` (default: sys.argv[1:]) and return its result.

    A UserError, from parsing or from `fn`, becomes "error: <message>" on stderr and exit status 2, and so does running
    out of memory (sizes the machine cannot hold); every other exception propagates with its traceback, because it
    is a bug, not a user mistake.
    """
    try:
        config = parse_args(config_cls, sys.argv[1:] if argv is None else argv)
        return fn(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (MemoryError, RuntimeError) as e:  # sizes the machine cannot hold (torch's allocators raise RuntimeError)
        if not isinstance(e, MemoryError) and not any(s in str(e) for s in ("out of memory", "can't allocate memory")):
            raise
        print(f"error: out of memory ({(str(e).strip() or type(e).__name__).splitlines()[-1][-160:]}): lower the "
              f"sizes asked for (batch, samples, k, model or context)", file=sys.stderr)
        raise SystemExit(2) from None


def config_to_dict(config):
    """The config as a JSON-safe dict (nested dataclasses, tuples and paths included), for logs and checkpoints."""
    def plain(value, where):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {str(k): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{where} = {value!r} is not JSON-safe ({type(value).__name__})")
    return plain(config, type(config).__name__)
