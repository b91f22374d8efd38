"""Bad input gets one clear line, never a traceback, never a silently wrong model (issue 12).

A table of malformed inputs across every script: flags (non-finite, negative, zero, unknown choices, empty
paths), files (model weights, model config, tokenizer, candidate files), output directories (under a regular
file, unwritable, held by another run), devices and prompts. For each case the script's entry point runs IN this
process, through `configurator.main` exactly as its command line does, and the test asserts:

- exit status 2 (SystemExit(2): a UserError), never 0 and never another exception;
- exactly one line on stderr, "error: ...", naming the problem (the flag, file or line: a substring per case);
- no traceback;
- every file that existed in the case's directory (a copy of a tiny VFT run, its candidate file, ...) has the
  same sha256 afterwards, and no new file appeared (a lock file excepted).

Validation must happen before any work, so each case is quick; a case that is still running after
CASE_SECONDS fails as "not refused before the work started". Add a case here for every bad-input bug found later.
"""

import hashlib
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch

import configurator

# A bad input must be refused long before this: validation comes before any work. (The variable shortens it for a
# look at which cases pass while the validation is being written.)
CASE_SECONDS = float(os.environ.get("BAD_INPUT_CASE_SECONDS", 30))

# The script modules and their entry points: `python <module>.py` runs configurator.main(entry, config class).
SCRIPTS = {
    "train_sft": ("train", "Config"),
    "train_align": ("train", "Config"),
    "candidates": ("build", "Config"),
    "evaluate": ("run", "Config"),
    "sample": ("run", "Config"),
    "reproduce": ("run", "Config"),
    "hf": ("export", "ExportConfig"),
    "tokenizer": ("train_tokenizer", "TokenizerConfig"),
}

# Settings that make each script's run tiny, so that a case whose bad input is NOT refused still ends soon (and
# then fails on its exit status). "{tmp}", "{run}", "{cands}" are the case's directory, its copy of the tiny VFT
# run and its copy of that run's candidate file.
BASE = {
    "train_sft": {"out_dir": "{tmp}/sft", "n_layer": "1", "n_head": "2", "n_embd": "32", "block_size": "256",
                  "n_train": "64", "batch_size": "4", "max_steps": "2", "warmup_steps": "1", "eval_every": "0",
                  "eval_examples": "4", "save_every": "2", "log_every": "1", "test_questions": "2",
                  "max_new_tokens": "8", "device": "cpu"},
    "train_align": {"vft": "{run}", "candidates": "{cands}", "out_dir": "{tmp}/align", "batch_size": "2",
                    "max_steps": "2", "warmup_steps": "1", "log_every": "1", "save_every": "2", "test_questions": "0",
                    "k_questions": "1", "n_questions": "4", "k": "2", "max_new_tokens": "8", "device": "cpu"},
    "candidates": {"ckpt": "{run}", "out": "{tmp}/new_cands.jsonl", "n_questions": "2", "k": "2",
                   "max_new_tokens": "8", "batch_size": "8", "device": "cpu"},
    "evaluate": {"ckpt": "{run}", "n_questions": "2", "k": "2", "k_questions": "1", "max_new_tokens": "8",
                 "batch_size": "8", "device": "cpu", "out": "{tmp}/eval.json"},
    "sample": {"ckpt": "{run}", "question": "What is 2 plus 3?", "num_samples": "1", "max_new_tokens": "8",
               "device": "cpu"},
    # slow if NOT refused: reproduce builds a VFT run of the default model size first (the timer stops it)
    "reproduce": {"out_dir": "{tmp}/rep", "seeds": "0", "methods": "vft", "vft_steps": "2", "n_questions": "2",
                  "k": "2", "align_steps": "1", "batch_size": "2", "test_questions": "1", "k_questions": "1",
                  "workers": "1"},
    "hf": {"ckpt": "{run}", "out": "{tmp}/hf_out"},
    "tokenizer": {"input": "{tmp}/text.txt", "vocab_size": "270", "out": "{tmp}/tok.tiktoken", "verbose": "0"},
}

# -----------------------------------------------------------------------------
# numeric flags: the values that are invalid for what each field means

INVALID = {
    "pos_int": ("0", "-1"),                          # a count or size: at least 1
    "nonneg_int": ("-1",),                           # 0 has a meaning ("off", "skip", "to the end", "all")
    "pos_float": ("nan", "inf", "0", "-1"),          # finite and > 0
    "nonneg_float": ("nan", "inf", "-1"),            # finite and >= 0
    "nonneg_or_inf": ("nan", "-1"),                  # >= 0; inf is a fair way to say "no limit"
    "prob": ("nan", "inf", "0", "-0.5", "1.5"),      # in (0, 1]
    "any": (),                                       # seeds: every integer is a seed
}

# Every int and float field of every script's config, with its rule (test_every_numeric_field_has_a_rule checks
# that none is missing), extra invalid values, and extra flags that make the field matter.
NUMERIC = {
    "train_sft": {
        "n_train": "pos_int", "n_test": "pos_int", "data_seed": "any",
        "min_chain_steps": "pos_int", "max_chain_steps": "pos_int",
        "max_factor": ("pos_int", "1"),              # synth needs a factor of at least 2
        "max_number": ("pos_int", "4"),              # synth needs amounts up to at least 5
        "n_layer": "pos_int", "n_head": "pos_int", "n_embd": "pos_int", "block_size": "pos_int",
        "batch_size": "pos_int", "max_steps": "pos_int",
        "learning_rate": "nonneg_float", "min_lr": "nonneg_float", "warmup_steps": "nonneg_int",
        "weight_decay": "nonneg_float", "grad_clip": "nonneg_or_inf", "grad_accum": "pos_int",
        "log_every": "pos_int", "eval_every": "nonneg_int", "eval_examples": "pos_int", "save_every": "pos_int",
        "test_questions": "nonneg_int", "max_new_tokens": "pos_int", "stop_after": "nonneg_int", "seed": "any",
    },
    "train_align": {
        "beta": "pos_float", "beta_dpo": ("pos_float", {"loss": "dpo"}), "lam": "nonneg_float",
        # n_questions, k, temperature only matter when candidates are built, but a bad value is bad anyway
        "n_questions": "pos_int", "k": "pos_int", "temperature": "nonneg_float",
        "batch_size": "pos_int", "max_steps": "pos_int", "learning_rate": "nonneg_float", "min_lr": "nonneg_float",
        "warmup_steps": "nonneg_int", "weight_decay": "nonneg_float", "grad_clip": "nonneg_or_inf",
        "max_candidates": "pos_int", "grad_accum": "pos_int", "log_every": "pos_int", "save_every": "pos_int",
        "test_questions": "nonneg_int", "k_questions": "nonneg_int", "max_new_tokens": "pos_int",
        "stop_after": "nonneg_int", "seed": "any",
    },
    "candidates": {
        "n_questions": "pos_int", "k": "pos_int", "temperature": "nonneg_float", "max_new_tokens": "pos_int",
        "batch_size": "pos_int", "seed": "any",
    },
    "evaluate": {
        "n_questions": "pos_int", "k": "nonneg_int",  # k=0 skips the sampled metrics
        "k_questions": "nonneg_int", "temperature": "nonneg_float", "max_new_tokens": "pos_int",
        "batch_size": "pos_int", "seed": "any",
    },
    "sample": {
        "num_samples": "pos_int", "max_new_tokens": "pos_int", "temperature": "nonneg_float",
        "top_k": "nonneg_int", "top_p": "prob", "seed": "any",
    },
    "reproduce": {
        "vft_steps": "pos_int", "block_size": "pos_int", "n_questions": "pos_int", "k": "pos_int", "temperature": "nonneg_float",
        "align_steps": "nonneg_int", "batch_size": "pos_int", "learning_rate": "nonneg_float",  # 0: the tuned value
        "beta": "nonneg_float", "beta_dpo": "pos_float", "test_questions": "nonneg_int", "k_questions": "nonneg_int",
        "max_factor": ("pos_int", "1"), "max_number": ("pos_int", "1"), "n_test": "pos_int", "n_layer": "pos_int",
        "max_new_tokens": "pos_int", "val_questions": "pos_int", "workers": "pos_int",
    },
    "hf": {"max_shard_size": "nonneg_int"},
    "tokenizer": {"vocab_size": ("pos_int", "100"),  # below the 256 byte tokens every rank file starts with
                  "verbose": "nonneg_int"},
}


class Dashed(str):
    """An expected flag that must appear with its dashes: --tokenizer, where the word tokenizer is everywhere."""


@dataclass
class Case:
    id: str
    script: str
    args: dict                      # flags over BASE[script]; a value None drops the flag
    expect: list                    # each item must be in the error line; a tuple: one of its items; "--name": the
                                    # flag, given as --name or (for names of 4 letters or more) as the word name
    setup: typing.Callable = None   # setup(ctx) corrupts or creates files before the checksums are taken
    needs: str = ""                 # "cuda-absent", "tokenizer_info": skipped when the condition does not hold


def numeric_cases():
    cases = []
    for script, rules in NUMERIC.items():
        for name, rule in rules.items():
            rule, extras, args = (rule,) if isinstance(rule, str) else rule, (), {}
            kind, *more = rule
            for item in more:
                if isinstance(item, dict):
                    args.update(item)
                else:
                    extras += (item,)
            for value in INVALID[kind] + extras:
                cases.append(Case(f"{script}-{name}={value}", script, {**args, name: value}, [f"--{name}"]))
    return cases


# -----------------------------------------------------------------------------
# file corruptions: setup(ctx) functions

def _line_no(n):
    return (f":{n}", f"line {n}")


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors_edit(edit):
    def setup(ctx):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        path = ctx["ckpt"] / "model.safetensors"
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path), metadata=metadata)
    return setup


def _first_matrix(tensors):
    return next(name for name in sorted(tensors) if tensors[name].dim() == 2)


def _fill(value):
    def edit(tensors):
        tensors[_first_matrix(tensors)].fill_(value)
    return edit


def _drop(tensors):
    del tensors[_first_matrix(tensors)]


def _reshape(tensors):
    name = _first_matrix(tensors)
    tensors[name] = tensors[name][:, :-1].contiguous()


def model_bytes(make):
    def setup(ctx):
        path = ctx["ckpt"] / "model.safetensors"
        path.write_bytes(make(path.read_bytes()))
    return setup


MODEL_FILE = {  # kind -> setup; each names model.safetensors in its error
    "empty": model_bytes(lambda b: b""),
    "truncated": model_bytes(lambda b: b[:len(b) // 2]),
    "not_safetensors": model_bytes(lambda b: b"this is not a safetensors file\n"),
    "nan_weights": safetensors_edit(_fill(math.nan)),
    "inf_weights": safetensors_edit(_fill(math.inf)),
    "missing_tensor": safetensors_edit(_drop),
    "wrong_shape": safetensors_edit(_reshape),
}


def config_edit(edit):
    def setup(ctx):
        path = ctx["ckpt"] / "config.json"
        raw = json.loads(path.read_text())
        inner = raw.get("nanoaft", raw)
        result = edit(raw, inner)
        path.write_text(result if isinstance(result, str) else json.dumps(raw))
    return setup


def _set(key, value):
    def edit(raw, inner):
        inner[key] = value
    return edit


CONFIG_FILE = {  # kind -> setup; each names config.json in its error
    "invalid_json": config_edit(lambda raw, inner: '{"nanoaft": {"n_layer": 1,'),
    "not_an_object": config_edit(lambda raw, inner: "[1, 2, 3]"),
    "n_layer_string": config_edit(_set("n_layer", "1")),
    "n_embd_float": config_edit(_set("n_embd", 32.5)),
    "block_size_null": config_edit(_set("block_size", None)),
    "vocab_size_negative": config_edit(_set("vocab_size", -5)),
    "n_head_zero": config_edit(_set("n_head", 0)),
    "n_layer_bool": config_edit(_set("n_layer", True)),
    "unknown_field": config_edit(_set("n_wings", 2)),
}


def rank_bytes(make):
    """A corruption of the rank file: in the checkpoint (ctx["ckpt"]) or, for train_sft --tokenizer, a copy."""
    def setup(ctx):
        path = ctx["tmp"] / "bad.tiktoken"
        if not path.is_file():
            path = ctx["ckpt"] / "tokenizer.tiktoken"
        path.write_bytes(make(path.read_bytes()))
    return setup


def _cut(b):
    middle = b.index(b"\n", len(b) // 2)
    return b[:middle + 3]  # the last line keeps two characters of its token and loses its rank


def _replace_line(number, new):
    def make(b):
        lines = b.split(b"\n")
        lines[number - 1] = new
        return b"\n".join(lines)
    return make


TOKENIZER_FILE = {  # kind -> setup; each names tokenizer.tiktoken (or the rank file given) in its error
    "empty": rank_bytes(lambda b: b""),
    "cut": rank_bytes(_cut),
    "bad_base64": rank_bytes(_replace_line(10, b"!!notbase64!! 9")),
    "bad_rank": rank_bytes(_replace_line(10, b"CQ== nine")),
    "binary": rank_bytes(lambda b: b"\x00\xff\xfe" * 100),
}


def info_edit(edit):
    def setup(ctx):
        path = ctx["ckpt"] / "tokenizer_info.json"
        raw = json.loads(path.read_text())
        result = edit(raw)
        path.write_text(result if isinstance(result, str) else json.dumps(raw))
    return setup


TOKENIZER_INFO = {  # after the tokenizer format change (tokenizer.tiktoken + tokenizer_info.json)
    "invalid_json": info_edit(lambda raw: '{"pattern": '),
    "eot_unknown": info_edit(lambda raw: raw.update(eot_token="<|no such token|>")),
    "special_id_string": info_edit(lambda raw: raw.update(special_tokens={k: str(v) for k, v in
                                                                          raw["special_tokens"].items()})),
}


def ckpt_bytes(name, make):
    def setup(ctx):
        path = ctx["ckpt"] / name
        path.write_bytes(make(path.read_bytes()))
    return setup


def trainer_config(key, value):
    def make(b):
        state = json.loads(b)
        state["config"][key] = value
        return json.dumps(state).encode()
    return make


TRAINER_FILES = {  # kind (starting with the file's name) -> setup
    "trainer.json_invalid_json": ckpt_bytes("trainer.json", lambda b: b[:len(b) // 2]),
    "trainer.json_n_train_string": ckpt_bytes("trainer.json", trainer_config("n_train", "many")),
    "optimizer.safetensors_truncated": ckpt_bytes("optimizer.safetensors", lambda b: b[:len(b) // 2]),
    "rng.safetensors_empty": ckpt_bytes("rng.safetensors", lambda b: b""),
}


def cands_lines(edit):
    """A corruption of the candidate file copy {cands}: edit(lines) on its lines (line 1 is the header)."""
    def setup(ctx):
        path = ctx["cands"]
        lines = path.read_bytes().split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        result = edit(lines)
        path.write_bytes(result if isinstance(result, bytes) else b"\n".join(lines) + b"\n")
    return setup


def _group_edit(number, edit):
    def change(lines):
        group = json.loads(lines[number - 1])
        edit(group)
        lines[number - 1] = json.dumps(group).encode()
    return change


def _candidate(key, value):
    def edit(group):
        group["candidates"][0][key] = value
    return edit


def _pop(key):
    return lambda group: group.pop(key)


def _header_fingerprint(group):
    group["fingerprint"]["model"] = "0" * 16


CANDIDATES_FILE = {  # kind -> (setup, expected beyond the file's name)
    "non_utf8": (cands_lines(lambda lines: lines.__setitem__(2, lines[2][:20] + b"\xff\xfe" + lines[2][20:])), []),
    "header_only": (cands_lines(lambda lines: lines[0] + b"\n"), []),
    "empty": (cands_lines(lambda lines: b""), []),
    "header_not_json": (cands_lines(lambda lines: lines.__setitem__(0, b"{not json")), []),
    "header_no_fingerprint": (cands_lines(lambda lines: lines.__setitem__(0, b'{"summary": {}}')), []),
    "other_model": (cands_lines(_group_edit(1, _header_fingerprint)), []),
    "group_no_candidates": (cands_lines(_group_edit(3, _pop("candidates"))), [_line_no(3)]),
    "group_no_question": (cands_lines(_group_edit(2, _pop("question"))), [_line_no(2)]),
    "candidate_no_ids": (cands_lines(_group_edit(3, lambda g: g["candidates"][0].pop("ids"))), [_line_no(3)]),
    "ids_not_a_list": (cands_lines(_group_edit(3, _candidate("ids", "abc"))), [_line_no(3)]),
    "id_out_of_vocab": (cands_lines(_group_edit(3, _candidate("ids", [1, 10 ** 9]))), [_line_no(3)]),
    "grade_string": (cands_lines(_group_edit(3, _candidate("grade", "high"))), [_line_no(3)]),
    "correct_not_bool": (cands_lines(_group_edit(3, _candidate("correct", "yes"))), [_line_no(3)]),
    "sum_logp_nan": (cands_lines(_group_edit(3, _candidate("sum_logp", math.nan))), [_line_no(3)]),
    "group_not_object": (cands_lines(lambda lines: lines.__setitem__(2, b"[1, 2]")), [_line_no(3)]),
    "last_line_cut": (cands_lines(lambda lines: lines.__setitem__(-1, lines[-1][:len(lines[-1]) // 2])),
                      [_line_no(5)]),  # header + 4 groups: line 5
}


# -----------------------------------------------------------------------------
# other setups

def regular_file_named(name):
    def setup(ctx):
        write(ctx["tmp"] / name, "a regular file, not a directory\n")
    return setup


def bare_model_with_gsm8k(long_question_in):
    """{tmp}/model: the run's model without a training config (so --dataset/--data_dir choose the task), and
    {tmp}/gsm: a GSM8K-format task whose questions in `long_question_in` are longer than the model's context."""
    def setup(ctx):
        model = ctx["tmp"] / "model"
        model.mkdir()
        for path in ctx["ckpt"].iterdir():
            if path.name == "config.json" or path.name.startswith(("model.", "tokenizer")):
                shutil.copyfile(path, model / path.name)
        long = "Tom counts " + "one more apple and " * 300 + "how many apples?"
        for split, n in (("train", 600), ("test", 8)):  # the task keeps the last 500 training records for val
            question = long if split in long_question_in else "What is 2 plus 3?"
            rows = [{"question": question, "answer": "2 + 3 = 5\n#### 5"} for _ in range(n)]
            write(ctx["tmp"] / "gsm" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return setup


def gsm8k_with_bad_line(ctx):
    good = json.dumps({"question": "What is 2 plus 3?", "answer": "2 + 3 = 5\n#### 5"})
    write(ctx["tmp"] / "gsm" / "train.jsonl", good + "\nthis line is not JSON\n" + (good + "\n") * 600)
    write(ctx["tmp"] / "gsm" / "test.jsonl", (good + "\n") * 10)


def copy_rank_file(ctx):
    shutil.copyfile(REPO / "data" / "tokenizer.tiktoken", ctx["tmp"] / "bad.tiktoken")


def then(*setups):
    def setup(ctx):
        for s in setups:
            s(ctx)
    return setup


def lock_file_name():
    """The lock file the trainers hold in their out_dir: checkpoint.LOCK ("run.lock"), or ".lock" before it exists."""
    checkpoint = importlib.import_module("checkpoint")
    for attr in ("LOCK_FILE", "LOCK", "LOCKFILE", "LOCK_NAME"):
        if isinstance(getattr(checkpoint, attr, None), str):
            return getattr(checkpoint, attr)
    return ".lock"


HOLD_LOCK = """
import fcntl, os, sys
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)   # both kinds of lock: flock and POSIX (lockf) locks do not see each other
fcntl.lockf(f, fcntl.LOCK_EX)
f.truncate(0)
print(os.getpid(), file=f, flush=True)  # as a running trainer does
print("locked", flush=True)
sys.stdin.read()
"""


def held_lock(directory):
    """Another process holds the lock on {tmp}/<directory> until the case ends (not this process: a POSIX lock
    held by the test itself would not stop a second lock from the same process)."""
    def setup(ctx):
        run_dir = ctx["tmp"] / directory
        run_dir.mkdir(exist_ok=True)
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / lock_file_name())],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if holder.stdout.readline().strip() != "locked":
            pytest.fail(f"the process meant to hold the lock failed: {holder.communicate()[1][-1000:]}")
        ctx["cleanups"].append(lambda: (holder.stdin.close(), holder.wait(timeout=10)))
    return setup


# -----------------------------------------------------------------------------
# the table

LOADERS = {  # scripts that read the run's model, and the flags that point them at it
    "sample": {}, "evaluate": {}, "candidates": {},
    "train_sft": {"init_from": "{run}", "out_dir": "{tmp}/sft"},
    "train_align": {},
    "hf": {},  # export: a broken or non-finite model is not written out as if it were fine
}
DEVICE_SCRIPTS = ("train_sft", "train_align", "candidates", "evaluate", "sample")
TRAINERS = ("train_sft", "train_align")


def table():
    cases = numeric_cases()
    add = lambda *a, **kw: cases.append(Case(*a, **kw))  # noqa: E731

    # the command line itself (configurator.py): these pass today and check the harness
    for script in ("train_sft", "train_align", "candidates", "evaluate", "sample", "reproduce"):
        add(f"{script}-unknown_flag", script, {"no_such_flag": "1"}, ["--no_such_flag"])
    for script, name in (("train_sft", "batch_size"), ("train_align", "beta"), ("candidates", "k"),
                         ("evaluate", "n_questions"), ("sample", "temperature"), ("reproduce", "vft_steps")):
        add(f"{script}-{name}=abc", script, {name: "abc"}, [f"--{name}"])

    # combinations of flags
    add("train_sft-n_embd_not_multiple_of_n_head", "train_sft", {"n_embd": "30", "n_head": "4"},
        [("--n_embd", "--n_head")])
    add("train_sft-min_chain_steps>max_chain_steps", "train_sft", {"min_chain_steps": "4", "max_chain_steps": "2"},
        [("--min_chain_steps", "--max_chain_steps")])
    add("train_sft-batch_not_multiple_of_grad_accum", "train_sft", {"batch_size": "4", "grad_accum": "3"},
        [("--grad_accum", "--batch_size")])
    add("train_align-batch_not_multiple_of_grad_accum", "train_align", {"batch_size": "2", "grad_accum": "3"},
        [("--grad_accum", "--batch_size")])
    add("train_sft-block_size_fits_no_pair", "train_sft", {"block_size": "8"}, ["--block_size"])
    add("train_align-loss=vft,constraint=bc", "train_align", {"loss": "vft", "constraint": "bc"}, ["--constraint"])

    # unknown choices
    for script, name in (("train_align", "loss"), ("train_align", "constraint"), ("train_align", "nll_on"),
                         ("train_align", "eval_split"), ("evaluate", "split"), ("reproduce", "eval_split"),
                         ("train_sft", "dtype"), ("train_align", "dtype"), ("candidates", "dtype"),
                         ("evaluate", "dtype"), ("train_sft", "parallel"), ("train_align", "parallel"),
                         ("train_sft", "dataset"), ("candidates", "dataset"), ("evaluate", "dataset"),
                         ("reproduce", "methods")):
        add(f"{script}-{name}=bogus", script, {name: "bogus"}, [f"--{name}"])
    add("reproduce-seeds=abc", "reproduce", {"seeds": "1,abc"}, ["--seeds"])
    add("reproduce-seeds_empty", "reproduce", {"seeds": ""}, ["--seeds"])
    add("reproduce-methods_empty", "reproduce", {"methods": ""}, ["--methods"])

    # devices
    for script in DEVICE_SCRIPTS:
        add(f"{script}-device=cuda_without_gpu", script, {"device": "cuda"}, ["--device"], needs="cuda-absent")
        add(f"{script}-device=cuda:99", script, {"device": "cuda:99"}, ["--device"])
        add(f"{script}-device=bogus", script, {"device": "bogus"}, ["--device"])
        add(f"{script}-device_empty", script, {"device": ""}, ["--device"])

    # empty and missing paths
    for script, name in (("train_sft", "out_dir"), ("train_sft", "tokenizer"), ("train_align", "vft"),
                         ("candidates", "ckpt"), ("evaluate", "ckpt"), ("sample", "ckpt"), ("reproduce", "out_dir"),
                         ("hf", "ckpt"), ("hf", "out")):
        add(f"{script}-{name}_empty", script, {name: ""}, [Dashed(f"--{name}")])
    add("train_sft-gsm8k_data_dir_empty", "train_sft", {"dataset": "gsm8k", "data_dir": ""}, ["--data_dir"])
    for script, name in (("train_sft", "init_from"), ("train_align", "vft"), ("candidates", "ckpt"),
                         ("evaluate", "ckpt"), ("sample", "ckpt"), ("hf", "ckpt"), ("hf", "source")):
        add(f"{script}-{name}_missing", script, {name: "{tmp}/no_such_run"}, ["no_such_run"])
    add("train_sft-tokenizer_missing", "train_sft", {"tokenizer": "{tmp}/no_such.tiktoken"}, ["no_such.tiktoken"])
    add("train_sft-gsm8k_data_dir_missing", "train_sft", {"dataset": "gsm8k", "data_dir": "{tmp}/no_such_dir"},
        ["no_such_dir"])
    add("train_sft-gsm8k_bad_line", "train_sft", {"dataset": "gsm8k", "data_dir": "{tmp}/gsm"},
        ["train.jsonl", _line_no(2)], setup=gsm8k_with_bad_line)
    add("train_sft-init_from_regular_file", "train_sft", {"init_from": "{tmp}/a_file"}, ["a_file"],
        setup=regular_file_named("a_file"))
    # an explicit prerequisite that is not there is an error, never a reason to build it there
    add("train_align-vft_explicit_empty_dir", "train_align", {"vft": "{tmp}/empty_run"}, ["empty_run"],
        setup=lambda ctx: (ctx["tmp"] / "empty_run").mkdir())
    add("train_align-candidates_missing", "train_align", {"candidates": "{tmp}/no_such.jsonl"}, ["no_such.jsonl"])
    add("train_align-candidates_is_a_directory", "train_align", {"candidates": "{tmp}/a_dir"}, ["a_dir"],
        setup=lambda ctx: (ctx["tmp"] / "a_dir").mkdir())
    add("evaluate-gsm8k_data_dir_missing", "evaluate",
        {"ckpt": "{tmp}/model", "dataset": "gsm8k", "data_dir": "{tmp}/no_such_dir"}, ["no_such_dir"],
        setup=bare_model_with_gsm8k(()))

    # output paths: under a regular file, a regular file, unwritable (/proc refuses even root), a directory
    outputs = {"train_sft": "out_dir", "train_align": "out_dir", "candidates": "out", "evaluate": "out",
               "reproduce": "out_dir", "hf": "out", "tokenizer": "out"}
    for script, name in outputs.items():
        add(f"{script}-{name}_under_a_regular_file", script, {name: "{tmp}/a_file/sub"}, ["a_file"],
            setup=regular_file_named("a_file"))
        add(f"{script}-{name}_unwritable", script, {name: "/proc/nanoaft_bad_input"}, ["/proc/nanoaft_bad_input"])
    for script in ("train_sft", "train_align", "reproduce"):
        add(f"{script}-out_dir_is_a_regular_file", script, {"out_dir": "{tmp}/a_file"}, ["a_file"],
            setup=regular_file_named("a_file"))
    for script in ("candidates", "evaluate"):
        add(f"{script}-out_is_a_directory", script, {"out": "{tmp}/a_dir"}, ["a_dir"],
            setup=lambda ctx: (ctx["tmp"] / "a_dir").mkdir())

    # existing runs: no silent overwrite, resume only what is there and the same run
    add("train_sft-out_dir_holds_a_run", "train_sft", {"out_dir": "{run}"}, [("--overwrite", "--resume")])
    add("train_align-out_dir_is_the_vft_run", "train_align", {"out_dir": "{run}"}, [("--overwrite", "--resume")])
    add("train_sft-resume_nothing", "train_sft", {"resume": "true"}, ["--resume"])
    add("train_align-resume_nothing", "train_align", {"resume": "true"}, ["--resume"])
    add("train_sft-resume_other_max_steps", "train_sft", {"out_dir": "{run}", "resume": "true", "max_steps": "5"},
        ["--max_steps"])

    # a second run on an out_dir another process holds
    for script in TRAINERS:
        add(f"{script}-out_dir_locked", script, {"out_dir": "{tmp}/busy_run"}, ["busy_run"],
            setup=held_lock("busy_run"))
    add("train_sft-resume_locked_run", "train_sft", {"out_dir": "{run}", "resume": "true"}, ["/run"],
        setup=held_lock("run"))

    # prompts
    add("sample-prompt_and_question", "sample", {"prompt": "Question: 1 + 1?"}, [("--prompt", "--question")])
    add("sample-no_prompt_no_question", "sample", {"question": None}, [("--prompt", "--question")])
    long = "one more apple and " * 400
    add("sample-prompt_longer_than_context", "sample", {"question": None, "prompt": long},
        [("--prompt", "block_size", "context")])
    add("sample-question_longer_than_context", "sample", {"question": long}, [("--question", "block_size", "context")])
    add("evaluate-question_longer_than_context", "evaluate",
        {"ckpt": "{tmp}/model", "dataset": "gsm8k", "data_dir": "{tmp}/gsm"}, [("block_size", "context")],
        setup=bare_model_with_gsm8k(("test",)))
    add("candidates-no_question_fits_context", "candidates",
        {"ckpt": "{tmp}/model", "dataset": "gsm8k", "data_dir": "{tmp}/gsm", "out": "{tmp}/c.jsonl"},
        [("block_size", "context")], setup=bare_model_with_gsm8k(("train",)))

    # the model's files, for every script that loads a model
    for kind, setup in MODEL_FILE.items():
        for script, args in LOADERS.items():
            add(f"{script}-model.safetensors_{kind}", script, args, ["model.safetensors"], setup=setup)
    for kind, setup in CONFIG_FILE.items():
        for script in ("sample", "evaluate"):
            add(f"{script}-config.json_{kind}", script, {}, ["config.json"], setup=setup)
    for kind in ("invalid_json", "n_layer_string"):
        for script in ("candidates", "train_sft", "train_align"):
            add(f"{script}-config.json_{kind}", script, LOADERS[script], ["config.json"], setup=CONFIG_FILE[kind])
    for kind, setup in TOKENIZER_FILE.items():
        for script in ("sample", "evaluate", "candidates", "train_align"):
            add(f"{script}-tokenizer.tiktoken_{kind}", script, {}, ["tokenizer.tiktoken"], setup=setup)
        add(f"train_sft-tokenizer_rank_file_{kind}", "train_sft", {"tokenizer": "{tmp}/bad.tiktoken"},
            ["bad.tiktoken"], setup=then(copy_rank_file, setup))
    for kind, setup in TOKENIZER_INFO.items():
        for script in ("sample", "evaluate"):
            add(f"{script}-tokenizer_info.json_{kind}", script, {}, ["tokenizer_info.json"], setup=setup,
                needs="tokenizer_info")

    # the rest of a training checkpoint: what --resume reads, and the run's config the task comes from
    for kind, setup in TRAINER_FILES.items():
        if kind == "trainer.json_n_train_string":
            continue  # --resume rightly reports that as a different --n_train
        name = kind.split("_")[0]
        add(f"train_sft-resume_{kind}", "train_sft", {"out_dir": "{run}", "resume": "true"}, [name], setup=setup)
    add("train_sft-resume_nan_weights", "train_sft", {"out_dir": "{run}", "resume": "true"}, ["model.safetensors"],
        setup=MODEL_FILE["nan_weights"])
    for kind in ("trainer.json_invalid_json", "trainer.json_n_train_string"):
        for script in ("evaluate", "candidates"):
            add(f"{script}-{kind}", script, {}, ["trainer.json"], setup=TRAINER_FILES[kind])
    for script in ("sample", "evaluate"):
        add(f"{script}-ckpt_is_a_regular_file", script, {"ckpt": "{tmp}/a_file"}, ["a_file"],
            setup=regular_file_named("a_file"))

    # candidate files (train_align reads the whole file before any work)
    for kind, (setup, expect) in CANDIDATES_FILE.items():
        args = {"loss": "dpo"} if kind == "sum_logp_nan" else {}  # DPO's reference is the stored sum_logp
        add(f"train_align-candidates_{kind}", "train_align", args, ["cands.jsonl", *expect], setup=setup)

    # tokenizer.py: training a rank file
    add("tokenizer-input_missing", "tokenizer", {"input": "{tmp}/no_such.txt"}, ["no_such.txt"])
    add("tokenizer-input_empty", "tokenizer", {}, ["text.txt"], setup=lambda ctx: write(ctx["tmp"] / "text.txt", ""))
    cases += later_cases()
    return cases


# -----------------------------------------------------------------------------
# found after the table was written (a second attempt with inputs outside it); each was a traceback, a NaN or a
# silent acceptance before its fix

SCRIPTS["vft_curve"] = ("run", "Config")
BASE["vft_curve"] = {"out_dir": "{tmp}/curve", "steps": "1", "val_questions": "2", "val_examples": "2", "device": "cpu"}
TOO_LONG = "x" * 300  # one path component longer than any file system allows (ENAMETOOLONG)


def _config_size(key, value):
    return config_edit(_set(key, value))


def later_cases():
    cases = []
    add = lambda *a, **kw: cases.append(Case(*a, **kw))  # noqa: E731
    # integers beyond 64 bits, floats beyond float32 (torch overflowed: a traceback)
    for script in ("train_sft", "sample", "candidates", "evaluate"):
        add(f"{script}-seed=2**70", script, {"seed": str(2 ** 70)}, ["--seed"])
    add("train_sft-learning_rate=1e300", "train_sft", {"learning_rate": "1e300"}, ["--learning_rate"])
    add("train_sft-learning_rate=1e38", "train_sft", {"learning_rate": "1e38"}, ["--learning_rate"])
    add("train_align-min_lr=1e38", "train_align", {"min_lr": "1e38"}, ["--min_lr"])
    add("train_align-beta=1e300", "train_align", {"beta": "1e300"}, ["--beta"])
    add("sample-temperature=1e300", "sample", {"temperature": "1e300"}, ["--temperature"])
    add("train_align-max_candidates=10**9", "train_align", {"max_candidates": str(10 ** 9)}, ["--max_candidates"])
    # paths the system cannot look up: a NUL byte, a name too long (ValueError / OSError tracebacks)
    for script, name in (("train_sft", "out_dir"), ("train_sft", "init_from"), ("hf", "out"), ("reproduce", "out_dir"),
                         ("vft_curve", "out_dir")):
        add(f"{script}-{name}_nul_byte", script, {name: "{tmp}/a\x00b"}, [f"--{name}"])
    for script, name in (("train_sft", "out_dir"), ("train_align", "out_dir"), ("train_align", "candidates"),
                         ("train_sft", "tokenizer"), ("candidates", "out"), ("evaluate", "ckpt"), ("tokenizer", "input")):
        add(f"{script}-{name}_name_too_long", script, {name: "{tmp}/" + TOO_LONG}, [f"--{name}"])
    for script, name in (("sample", "ckpt"), ("train_align", "vft")):
        add(f"{script}-{name}_name_too_long", script, {name: "{tmp}/" + TOO_LONG}, [TOO_LONG[:50]])
    add("train_sft-gsm8k_data_dir_name_too_long", "train_sft", {"dataset": "gsm8k", "data_dir": "{tmp}/" + TOO_LONG},
        ["--data_dir"])
    add("sample-question_only_spaces", "sample", {"question": "  \t "}, ["--question"])
    # model config sizes no model has (an OverflowError or an allocation traceback while building it)
    for script in ("sample", "evaluate", "train_align", "hf"):
        add(f"{script}-config.json_block_size=10**20", script, {}, ["config.json", "block_size"],
            setup=_config_size("block_size", 10 ** 20))
    add("sample-config.json_vocab_size=10**12", "sample", {}, ["config.json", "vocab_size"],
        setup=_config_size("vocab_size", 10 ** 12))
    add("train_sft-init_from_config.json_n_layer=10**9", "train_sft", LOADERS["train_sft"], ["config.json", "n_layer"],
        setup=_config_size("n_layer", 10 ** 9))
    # tokenizer_info.json: a pattern that matches empty text (tiktoken panicked), two special tokens on one id
    for kind, edit in (("pattern_empty", lambda raw: raw.update(pattern="")),
                       ("pattern_matches_empty", lambda raw: raw.update(pattern="(a*)*$")),
                       ("special_ids_shared", lambda raw: raw.update(special_tokens={"<|endoftext|>": 511,
                                                                                    "<|bos|>": 511}))):
        for script in ("sample", "evaluate"):
            add(f"{script}-tokenizer_info.json_{kind}", script, {}, ["tokenizer_info.json"], setup=info_edit(edit),
                needs="tokenizer_info")
    # candidate files: numbers beyond float32 (a conversion traceback), a candidate longer than the context
    for kind, args, edit in (("sum_logp=1e308", {"loss": "dpo"}, _candidate("sum_logp", 1e308)),
                             ("sum_logp=10**400", {"loss": "dpo"}, _candidate("sum_logp", 10 ** 400)),
                             ("grade=1e308", {}, _candidate("grade", 1e308)),
                             ("ids_longer_than_context", {}, _candidate("ids", [5] * 1000))):
        add(f"train_align-candidates_{kind}", "train_align", args, ["cands.jsonl", _line_no(3)],
            setup=cands_lines(_group_edit(3, edit)))
    # sizes no machine holds (more than 2**47 bytes: refused by any allocator, never overcommitted)
    add("sample-num_samples=10**12", "sample", {"num_samples": str(10 ** 12)}, ["memory"])
    add("candidates-k=10**12", "candidates", {"k": str(10 ** 12)}, ["memory"])
    add("evaluate-k=10**12", "evaluate", {"k": str(10 ** 12)}, ["memory"])
    # vft_curve.py
    for steps in ("200,100", "100,100", "0,100", "-5", "1e3", "100;200", ","):
        add(f"vft_curve-steps={steps}", "vft_curve", {"steps": steps}, ["--steps"])
    add("vft_curve-steps_beyond_64_bits", "vft_curve", {"steps": "1,2," + "9" * 30}, ["--steps"])
    add("vft_curve-device=bogus", "vft_curve", {"device": "bogus"}, ["--device"])
    add("vft_curve-val_questions_above_the_split", "vft_curve", {"val_questions": "100000"}, ["--val_questions"])
    add("vft_curve-compare_without_a_run", "vft_curve", {"compare": "{tmp}/nowhere"}, ["--compare"])
    add("vft_curve-curve.json_not_json", "vft_curve", {}, ["curve.json"],
        setup=lambda ctx: write(ctx["tmp"] / "curve" / "curve.json", "{not json"))
    # the command line
    add("train_sft-empty_flag_name", "train_sft", {"": "x"}, ["unknown flag"])
    return cases


CASES = table()
REPO = Path(__file__).resolve().parents[1]


def test_the_table_is_big_and_its_ids_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 150


@pytest.mark.parametrize("script", list(NUMERIC))
def test_every_numeric_field_has_a_rule(script):
    """A numeric field added to a config later gets its invalid values here (or the rule "any")."""
    config = config_class(script)
    hints = typing.get_type_hints(config)
    numeric = {f.name for f in fields(config) if configurator._unwrap_optional(hints[f.name])[0] in (int, float)}
    assert set(NUMERIC[script]) == numeric, (f"{script}: fields without a rule {sorted(numeric - set(NUMERIC[script]))}, "
                                             f"rules without a field {sorted(set(NUMERIC[script]) - numeric)}")


# -----------------------------------------------------------------------------
# running a case

def config_class(script):
    module = importlib.import_module(script)
    config = getattr(module, SCRIPTS[script][1], None)
    if config is None:
        pytest.skip(f"{script}.py has no {SCRIPTS[script][1]} any more")
    return config


def entry(script):
    module = importlib.import_module(script)
    fn = getattr(module, SCRIPTS[script][0], None)
    if fn is None:
        pytest.skip(f"{script}.py has no {SCRIPTS[script][0]}() any more")
    return fn, config_class(script)


def run_script(script, argv):
    """configurator.main(entry, Config, argv) as `python script.py *argv` runs it."""
    fn, config = entry(script)
    return configurator.main(fn, config, argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A VFT run trained for 2 steps with a one-layer model, and 4 candidate groups sampled from it (made once)."""
    base = tmp_path_factory.mktemp("tiny_run")
    run = base / "run"
    sft = {**BASE["train_sft"], "out_dir": str(run)}
    run_script("train_sft", [f"--{k}={v}" for k, v in sft.items()])
    run_script("candidates", [f"--ckpt={run}", f"--out={run / 'candidates.jsonl'}", "--n_questions=4", "--k=2",
                              "--max_new_tokens=8", "--batch_size=8", "--device=cpu"])
    assert len((run / "candidates.jsonl").read_text().splitlines()) == 5  # CANDIDATES_FILE counts on it
    return run


def checkpoint_dir(run):
    return next(path.parent for path in sorted(run.rglob("model.safetensors")))


def checksums(root):
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and "__pycache__" not in path.parts}


class Runaway(BaseException):
    """Raised by the timer: a BaseException, so that no `except Exception` in the scripts swallows it."""


def _runaway(signum, frame):
    raise Runaway()


def mentions(line, item):
    if isinstance(item, Dashed):
        return re.search(rf"{re.escape(item)}\b", line) is not None
    if isinstance(item, tuple):
        return any(mentions(line, alternative) for alternative in item)
    if item.startswith("--"):  # a flag: "--name", or "name" as a word when it is too long to be an accident
        name = re.escape(item[2:])
        word = rf"|(?<![\w./-]){name}(?![\w.])"  # the word alone, not a piece of a path or file name
        return re.search(rf"--{name}\b" + (word if len(item) >= 6 else ""), line) is not None
    return item in line


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tiny_run, tmp_path, monkeypatch, capsys):
    if case.needs == "cuda-absent" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tmp = tmp_path
    shutil.copytree(tiny_run, tmp / "run")
    shutil.copyfile(tiny_run / "candidates.jsonl", tmp / "cands.jsonl")
    write(tmp / "text.txt", "".join(f"Tom has {i} apples and buys {i % 7} more. {i} + {i % 7} = {i + i % 7}\n"
                                    for i in range(300)))
    ctx = {"tmp": tmp, "run": tmp / "run", "ckpt": checkpoint_dir(tmp / "run"), "cands": tmp / "cands.jsonl",
           "cleanups": []}
    if case.needs == "tokenizer_info" and not (ctx["ckpt"] / "tokenizer_info.json").is_file():
        pytest.skip("no tokenizer_info.json in a checkpoint yet (the new tokenizer format)")
    try:
        if case.setup:
            case.setup(ctx)
        merged = {**BASE[case.script], **case.args}
        argv = [f"--{key}={value.format(**ctx)}" for key, value in merged.items() if value is not None]
        before = checksums(tmp)
        monkeypatch.chdir(tmp)  # a stray relative path lands here, where it is seen
        capsys.readouterr()
        status, escaped = None, None
        previous = signal.signal(signal.SIGALRM, _runaway)
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            run_script(case.script, argv)
            status = 0
        except SystemExit as e:
            status = e.code
        except Runaway:
            status = "runaway"
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001: any other exception (a Rust panic is a BaseException) is the bug
            escaped = e
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        out, err = capsys.readouterr()
        after = checksums(tmp)
    finally:
        for cleanup in ctx["cleanups"]:
            cleanup()

    shown = " ".join(arg if len(arg) <= 120 else arg[:100] + "..." for arg in argv)
    if escaped is not None:
        where = traceback.extract_tb(escaped.__traceback__)[-1]
        pytest.fail(f"{type(escaped).__name__} escaped (a traceback, not exit 2) at {Path(where.filename).name}:"
                    f"{where.lineno}: {str(escaped)[:300]}\n  argv: {shown}")
    assert status != "runaway", f"still running after {CASE_SECONDS} s: not refused before the work started\n  argv: {shown}"
    assert status == 2, f"exit status {status}, expected 2 (the bad input was accepted)\n  argv: {shown}\n  stderr: {err[-500:]}"
    assert "Traceback" not in err + out, f"a traceback was printed:\n{err[-2000:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-2000:]}"
    line = lines[0]
    assert line.startswith("error: "), line
    for item in case.expect:
        assert mentions(line, item), f"the error does not name {item!r}: {line}"
    changed = sorted(name for name in before if after.get(name) != before[name])
    assert not changed, f"files changed or removed by a refused run: {changed}"
    lock = lock_file_name()
    new = sorted(name for name in after if name not in before and Path(name).name != lock)
    assert not new, f"files written by a refused run: {new}"


# -----------------------------------------------------------------------------
# valid but odd inputs: they must simply work (exit 0, nothing non-finite); each once failed

def _gsm8k_with_bom(ctx):
    good = json.dumps({"question": "What is 2 plus 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\r\n"
    write(ctx["tmp"] / "gsm" / "train.jsonl", b"\xef\xbb\xbf" + (good * 600).encode())  # a BOM, CRLF line ends
    write(ctx["tmp"] / "gsm" / "test.jsonl", b"\xef\xbb\xbf" + (good * 8).encode())


VALID_ODD = [
    Case("sample-temperature=1e-300", "sample", {"temperature": "1e-300"}, []),  # was NaN probabilities: IndexError
    Case("sample-top_p=5e-324", "sample", {"top_p": "5e-324"}, []),  # rounded to 0 in float32: every token dropped
    Case("candidates-temperature=5e-324", "candidates", {"temperature": "5e-324"}, []),
    Case("train_sft-seed=2**62", "train_sft", {"seed": str(2 ** 62)}, []),  # the data-order seed overflowed
    Case("train_sft-gsm8k_bom_crlf", "train_sft", {"dataset": "gsm8k", "data_dir": "{tmp}/gsm"}, [],
         setup=_gsm8k_with_bom),  # a BOM was "malformed JSON" at line 1
]


@pytest.mark.parametrize("case", VALID_ODD, ids=[case.id for case in VALID_ODD])
def test_valid_odd_input(case, tiny_run, tmp_path, monkeypatch, capsys):
    shutil.copytree(tiny_run, tmp_path / "run")
    ctx = {"tmp": tmp_path, "run": tmp_path / "run", "ckpt": checkpoint_dir(tmp_path / "run"),
           "cands": tmp_path / "cands.jsonl", "cleanups": []}
    if case.setup:
        case.setup(ctx)
    monkeypatch.chdir(tmp_path)
    merged = {**BASE[case.script], **case.args}
    result = run_script(case.script, [f"--{k}={v.format(**ctx)}" for k, v in merged.items() if v is not None])
    out, err = capsys.readouterr()
    assert "error" not in err and "nan" not in out.lower(), err[-1000:] + out[-1000:]
    if isinstance(result, list) and result and isinstance(result[0], str):  # sample.py: the texts
        assert all(isinstance(text, str) for text in result)
    for path in tmp_path.rglob("model.safetensors"):
        from safetensors.torch import load_file
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values()), path
