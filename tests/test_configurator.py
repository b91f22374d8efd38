"""configurator.py: --key=value parsing against dataclass field types, its errors, --help, and main()'s exit codes."""

from __future__ import annotations  # string annotations: parse_args must resolve them, as scripts may use this

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from configurator import (UserError, bounded, check_input, check_output, config_to_dict, format_help, main, parse_args,
                          validate, write_output)


@dataclass
class Config:
    learning_rate: float = 3e-4     # peak learning rate
    max_iters: int = 100            # optimizer steps
    out_dir: str = "out # not a comment"  # where to write
    compile: bool = False           # torch.compile the model
    seed: Optional[int] = None      # None: do not seed
    beta: float | None = 0.1        # X | None spelling of Optional
    loss: str = field(default="dpo", metadata={"choices": ("dpo", "rrhf", "pro")})  # alignment loss


def error_of(argv, cls=Config):
    with pytest.raises(UserError) as info:
        parse_args(cls, argv)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_arguments_gives_the_defaults():
    assert parse_args(Config, []) == Config()


def test_each_type_is_parsed():
    cfg = parse_args(Config, ["--learning_rate=1e-3", "--max_iters=7", "--out_dir=a=b", "--compile=yes",
                              "--seed=42", "--beta=none", "--loss=rrhf"])
    assert cfg == Config(learning_rate=1e-3, max_iters=7, out_dir="a=b", compile=True, seed=42, beta=None,
                         loss="rrhf")
    assert type(cfg.max_iters) is int and type(cfg.learning_rate) is float and type(cfg.seed) is int


@pytest.mark.parametrize("text, expected", [("true", True), ("True", True), ("1", True), ("yes", True),
                                            ("false", False), ("FALSE", False), ("0", False), ("no", False)])
def test_bool_spellings(text, expected):
    assert parse_args(Config, [f"--compile={text}"]).compile is expected


def test_bare_bool_flag_means_true():
    assert parse_args(Config, ["--compile"]).compile is True


def test_float_accepts_integer_text_and_optional_accepts_both_none_spellings():
    assert parse_args(Config, ["--learning_rate=2"]).learning_rate == 2.0
    assert parse_args(Config, ["--seed=None"]).seed is None
    assert parse_args(Config, ["--seed=none", "--beta=0.5"]).beta == 0.5


def test_values_are_never_evaluated():
    assert parse_args(Config, ["--out_dir=__import__('os').getcwd()"]).out_dir == "__import__('os').getcwd()"
    assert "expected int" in error_of(["--max_iters=2*3"])


def test_unknown_flag_names_the_nearest_valid_one():
    assert error_of(["--lerning_rate=1"]) == "unknown flag --lerning_rate; did you mean --learning_rate?"
    assert error_of(["--max-iters=3"]) == "unknown flag --max-iters; did you mean --max_iters?"
    assert error_of(["--zzzz=1"]) == "unknown flag --zzzz; see --help for the valid flags"


@pytest.mark.parametrize("arg, expected", [
    ("--max_iters=3.5", "invalid value '3.5' for --max_iters: expected int"),
    ("--max_iters=", "invalid value '' for --max_iters: expected int"),
    ("--learning_rate=fast", "invalid value 'fast' for --learning_rate: expected float"),
    ("--compile=maybe", "invalid value 'maybe' for --compile: expected bool (true/false/1/0/yes/no)"),
    ("--seed=abc", "invalid value 'abc' for --seed: expected int or none"),
    ("--max_iters=none", "invalid value 'none' for --max_iters: expected int"),
])
def test_bad_value_names_the_flag_and_the_type(arg, expected):
    assert error_of([arg]) == expected


def test_bad_choice_names_the_valid_ones():
    assert error_of(["--loss=ipo"]) == "invalid value 'ipo' for --loss: choose one of dpo, rrhf, pro"


@pytest.mark.parametrize("arg, expected", [
    ("train.txt", "unexpected argument 'train.txt': settings are given as --key=value"),
    ("-x", "unexpected argument '-x': settings are given as --key=value"),
    ("--", "unexpected argument '--': settings are given as --key=value"),
    ("--max_iters", "--max_iters needs a value: --max_iters=<int>"),
])
def test_positional_and_valueless_arguments_are_rejected(arg, expected):
    assert error_of([arg]) == expected


def test_a_flag_given_twice_is_rejected():
    assert error_of(["--max_iters=1", "--max_iters=2"]) == "--max_iters is given twice"


@dataclass
class Required:
    data: str                       # path to the data
    tags: list = field(default_factory=list)  # not settable from the command line


def test_required_fields_and_unsupported_types():
    assert parse_args(Required, ["--data=x"]) == Required(data="x")
    assert error_of([], Required) == "missing required flag(s): --data"
    assert error_of(["--data=x", "--tags=a"], Required) == "--tags cannot be set from the command line (its type is list)"


def test_help_lists_every_field_with_type_default_choices_and_comment(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(Config, ["--max_iters=5", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out == format_help(Config) + "\n"
    lines = out.splitlines()
    assert len(lines) == 1 + 7
    assert "  --learning_rate=float  (default: 0.0003)  # peak learning rate" in lines
    assert "  --seed=int or none  (default: None)  # None: do not seed" in lines
    assert "  --loss=str  (default: 'dpo')  [dpo, rrhf, pro]  # alignment loss" in lines
    assert "  --out_dir=str  (default: 'out # not a comment')  # where to write" in lines
    with pytest.raises(SystemExit) as info:
        parse_args(Config, ["-h"])
    assert info.value.code == 0


def test_help_without_source_still_lists_fields():
    # A class made at run time has no source to read comments from.
    from dataclasses import make_dataclass
    cls = make_dataclass("Dynamic", [("steps", int, 3)])
    assert format_help(cls).splitlines()[1] == "  --steps=int  (default: 3)"


def test_main_runs_fn_with_the_parsed_config_and_returns_its_result():
    assert main(lambda cfg: cfg.max_iters * 2, Config, ["--max_iters=21"]) == 42


def test_main_reads_sys_argv_by_default(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--seed=3"])
    assert main(lambda cfg: cfg.seed, Config) == 3


def test_main_turns_a_user_error_into_status_2_and_one_stderr_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(lambda cfg: pytest.fail("must not run"), Config, ["--lerning_rate=1"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: unknown flag --lerning_rate; did you mean --learning_rate?\n"
    assert captured.out == ""


def test_main_reports_a_user_error_raised_by_fn(capsys):
    def fn(cfg):
        raise UserError(f"{cfg.out_dir}/data.jsonl:3: bad JSON")
    with pytest.raises(SystemExit) as info:
        main(fn, Config, ["--out_dir=d"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: d/data.jsonl:3: bad JSON\n"


def test_main_lets_bugs_propagate_and_help_exit_cleanly(capsys):
    def fn(cfg):
        raise ValueError("a bug")
    with pytest.raises(ValueError, match="a bug"):
        main(fn, Config, [])
    with pytest.raises(SystemExit) as info:
        main(fn, Config, ["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().err == ""


@dataclass
class Inner:
    width: int = 4                  # nested configs are serialised too


@dataclass
class Outer:
    path: Path = Path("out/run")    # a Path becomes a string
    betas: tuple = (0.9, 0.95)      # a tuple becomes a list
    inner: Inner = field(default_factory=Inner)  # nested dataclass
    extra: dict = field(default_factory=lambda: {1: None})  # keys become strings


def test_config_to_dict_is_json_safe_and_round_trips():
    d = config_to_dict(Config(seed=5))
    assert d == {"learning_rate": 3e-4, "max_iters": 100, "out_dir": "out # not a comment", "compile": False,
                 "seed": 5, "beta": 0.1, "loss": "dpo"}
    assert Config(**json.loads(json.dumps(d))) == Config(seed=5)
    assert config_to_dict(Outer()) == {"path": "out/run", "betas": [0.9, 0.95], "inner": {"width": 4},
                                       "extra": {"1": None}}


def test_config_to_dict_rejects_what_json_cannot_hold():
    with pytest.raises(TypeError, match=r"Outer.extra\['x'\]"):
        config_to_dict(Outer(extra={"x": object()}))


@dataclass
class Bounded:
    steps: int = bounded(10, min=1)           # optimiser steps
    lr: float = bounded(1e-3, above=0, max=1.0)  # learning rate
    mode: str = field(default="a", metadata={"choices": ("a", "b")})  # a choice


@pytest.mark.parametrize("argv, expected", [
    (["--steps=0"], "--steps=0: must be at least 1"),
    (["--steps=-3"], "--steps=-3: must be at least 1"),
    (["--lr=0"], "--lr=0.0: must be greater than 0"),
    (["--lr=2"], "--lr=2.0: must be at most 1.0"),
    (["--lr=nan"], "--lr=nan: must be a finite number"),
    (["--lr=inf"], "--lr=inf: must be a finite number"),
    (["--lr=-inf"], "--lr=-inf: must be a finite number"),
])
def test_ranges_and_finiteness_are_checked_on_the_command_line(argv, expected):
    assert error_of(argv, Bounded) == expected


def test_validate_checks_a_config_built_in_python_without_changing_it():
    validate(Bounded())
    cfg = Bounded(steps=0)
    with pytest.raises(UserError, match="--steps=0: must be at least 1"):
        validate(cfg)
    assert cfg.steps == 0
    with pytest.raises(UserError, match="--steps='3': expected int, got str"):
        validate(Bounded(steps="3"))
    with pytest.raises(UserError, match="--mode=c: choose one of a, b"):
        validate(Bounded(mode="c"))
    with pytest.raises(UserError, match="--lr=nan: must be a finite number"):
        validate(Bounded(lr=float("nan")))
    validate(Bounded(lr=1))  # an int where a float is expected is fine
    validate(Config(seed=None))


def test_help_shows_the_ranges():
    lines = format_help(Bounded).splitlines()
    assert "  --steps=int  (default: 10)  [>= 1]  # optimiser steps" in lines
    assert "  --lr=float  (default: 0.001)  [> 0, <= 1.0]  # learning rate" in lines


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_check_output_refuses_unusable_paths_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    before = _tree(tmp_path)
    for path, flag, is_dir, expected in [
        ("", "out_dir", True, "--out_dir is empty"),
        ("  ", "out", False, "--out is empty"),
        (tmp_path / "a_file" / "sub", "out_dir", True, "a_file is a regular file, not a directory"),
        (tmp_path / "a_file", "out_dir", True, "a_file: a regular file, not a directory"),
        (tmp_path / "a_dir", "out", False, "a_dir: a directory, not a file"),
        ("/proc/nanoaft_check_output/sub", "out", False, "--out=/proc/nanoaft_check_output/sub: cannot write in /proc"),
    ]:
        with pytest.raises(UserError) as info:
            check_output(path, flag, is_dir)
        assert expected in str(info.value) and "\n" not in str(info.value)
    # usable paths: nothing is created, not even the missing directories
    assert check_output(tmp_path / "new" / "run", "out_dir") == tmp_path / "new" / "run"
    assert check_output(tmp_path / "a_dir", "out_dir") == tmp_path / "a_dir"
    assert check_output(tmp_path / "a_file", "out", is_dir=False) == tmp_path / "a_file"
    assert check_output(tmp_path / "a_dir" / "f.json", "out", is_dir=False) == tmp_path / "a_dir" / "f.json"
    assert _tree(tmp_path) == before


def test_check_input_names_the_flag_of_an_empty_or_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "" would otherwise quietly mean this directory, which exists
    for path, expected in [("", "--ckpt is empty"), (" ", "--ckpt is empty"),
                           (tmp_path / "no_such_run", "--ckpt=" + str(tmp_path / "no_such_run") + ": no such file")]:
        with pytest.raises(UserError, match=expected):
            check_input(path, "ckpt")
    (tmp_path / "run").mkdir()
    assert check_input("run", "ckpt") == Path("run")
    # shipped: a relative path missing here is looked up in the repository (data/ ships there), never an absolute one
    shipped = check_input("data/tokenizer.tiktoken", "tokenizer", shipped=True)
    assert shipped.is_absolute() and shipped == Path(__file__).resolve().parents[1] / "data" / "tokenizer.tiktoken"
    with pytest.raises(UserError, match="no such file"):
        check_input("data/tokenizer.tiktoken", "tokenizer")
    with pytest.raises(UserError, match="no such file"):
        check_input(tmp_path / "data" / "tokenizer.tiktoken", "tokenizer", shipped=True)


def test_write_output_writes_whole_files_and_names_a_failed_write(tmp_path):
    path = tmp_path / "new" / "dir" / "eval.json"  # missing directories, as check_output accepts them
    write_output(path, "{}\n")
    assert path.read_text() == "{}\n" and _tree(tmp_path) == ["new", "new/dir", "new/dir/eval.json"]
    write_output(path, "[]\n")  # replaced whole
    assert path.read_text() == "[]\n"
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_dir" / "x").write_text("")
    with pytest.raises(UserError, match="a_dir: cannot write") as info:
        write_output(tmp_path / "a_dir", "text")  # the rename onto a non-empty directory fails
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "new"]  # no temporary file left behind
