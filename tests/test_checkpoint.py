"""checkpoint.py: exact save/resume of model, optimizer and RNGs; atomic replacement under simulated kills and write
errors; nothing non-finite saved; the run-directory lock; the one loader (a Hugging Face directory converted through
the hf door); no pickle."""

import json
import math
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

import checkpoint
from checkpoint import (capture_rng, find_checkpoint, load_checkpoint, restore_optimizer, restore_rng,
                        save_checkpoint)
from configurator import UserError
from model import GPT, ModelConfig, save_model
from tokenizer import load_tokenizer

CHECKPOINT_FILES = {"config.json", "model.safetensors", "optimizer.safetensors", "trainer.json", "rng.safetensors",
                    "tokenizer.tiktoken", "tokenizer_info.json"}


class Killed(BaseException):
    """A simulated kill -9: nothing in save_checkpoint catches it, so it leaves the disk as a kill would."""


def tiny_config(n_embd=32):
    return ModelConfig(n_layer=1, n_embd=n_embd, n_head=2, vocab_size=64, block_size=32)


def make_optimizer(model):
    # Two groups as a trainer builds them: weight decay on matrices only.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 64, (2, 9), generator=g)  # (B, T+1)
    return tokens[:, :-1], tokens[:, 1:]


def train(model, optimizer, steps, first=0):
    for step in range(first, first + steps):
        _, loss = model(*batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def trained_run(steps=3, n_embd=32):
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd))
    optimizer = make_optimizer(model)
    train(model, optimizer, steps)
    return model, optimizer


def tensors_of(model):
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def enc(tmp_path):
    path = tmp_path / "ranks.tiktoken"
    path.write_bytes(b"".join(b"%s %d\n" % (__import__("base64").b64encode(bytes([i])), i) for i in range(63)))
    return load_tokenizer(path)  # bytes 0..62 and end-of-text: the 64 tokens of tiny_config


def test_save_then_load_restores_model_state_and_layout(tmp_path, enc):
    model, optimizer = trained_run()
    state = {"step": 3, "config": {"lr": 1e-2, "loss": "dpo"}, "history": [{"step": 1, "loss": 4.1}, math.inf]}
    directory = save_checkpoint(tmp_path / "run", model, optimizer, state, enc=enc)
    assert directory == tmp_path / "run" / "checkpoint"
    assert {p.name for p in directory.iterdir()} == CHECKPOINT_FILES
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint"]  # no temp or old directory left
    loaded_model, loaded_enc = checkpoint.load_model_and_tokenizer(tmp_path / "run")
    assert loaded_enc.encode_ordinary("0 1") == enc.encode_ordinary("0 1") and loaded_enc.eot_token == enc.eot_token

    loaded, loaded_state = load_checkpoint(tmp_path / "run")
    assert_same_tensors(tensors_of(loaded), tensors_of(model))
    assert loaded.config == model.config
    assert {k: loaded_state[k] for k in state} == state
    assert [len(g["params"]) for g in loaded_state["param_groups"]] == [len(g["params"]) for g in optimizer.param_groups]
    # every optimizer tensor is in optimizer.safetensors, under "state.<param>.<name>"
    from safetensors.torch import load_file
    saved = load_file(str(directory / "optimizer.safetensors"))
    for param_id, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            assert torch.equal(saved[f"state.{param_id}.{name}"], value)


def test_resumed_training_is_bitwise_identical_to_uninterrupted_training(tmp_path):
    model, optimizer = trained_run()
    save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    train(model, optimizer, 3, first=3)

    resumed, _ = load_checkpoint(tmp_path)
    resumed_optimizer = make_optimizer(resumed)
    restore_optimizer(resumed_optimizer, tmp_path)
    for group, original in zip(resumed_optimizer.param_groups, optimizer.param_groups):
        assert {k: v for k, v in group.items() if k != "params"} == {k: v for k, v in original.items() if k != "params"}
    assert resumed_optimizer.param_groups[0]["betas"] == (0.9, 0.95)  # a tuple again after JSON
    train(resumed, resumed_optimizer, 3, first=3)
    assert_same_tensors(tensors_of(resumed), tensors_of(model))

    # Control: without the optimizer state (fresh Adam moments) the same three steps land elsewhere.
    fresh, _ = load_checkpoint(tmp_path)
    train(fresh, make_optimizer(fresh), 3, first=3)
    assert not torch.equal(fresh.wte.weight, model.wte.weight)


def test_an_optimizer_before_its_first_step_round_trips(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config())
    save_checkpoint(tmp_path, model, make_optimizer(model), {"step": 0})
    optimizer = make_optimizer(model)
    restore_optimizer(optimizer, tmp_path)
    assert optimizer.state_dict()["state"] == {}


def draws():
    return torch.rand(4), random.random(), np.random.rand(3)


def assert_same_draws(a, b):
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_rng_states_are_restored(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    random.gauss(0, 1), np.random.randn()  # leave a cached Gaussian in both, part of their state
    model, optimizer = trained_run()
    torch.manual_seed(2)
    save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    expected = draws()
    draws()  # move every generator on
    _, state = load_checkpoint(tmp_path)
    restore_rng(state["rng"])
    assert_same_draws(draws(), expected)

    rng = capture_rng()
    expected = draws()
    restore_rng(rng)
    assert_same_draws(draws(), expected)
    assert json.loads(json.dumps({"python": rng["python"], "numpy": rng["numpy"]})) == {
        "python": rng["python"], "numpy": rng["numpy"]}


def assert_checkpoint_has_step(path, step, tensors):
    model, state = load_checkpoint(path)
    assert state["step"] == step
    assert_same_tensors(tensors_of(model), tensors)


@pytest.mark.parametrize("crash_in", ["save_model", "save_file", "_fsync"])
def test_a_kill_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch, crash_in):
    model, optimizer = trained_run()
    save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    old_tensors = tensors_of(model)
    train(model, optimizer, 2, first=3)

    real = getattr(checkpoint, crash_in)
    def crash(*args, **kwargs):
        real(*args, **kwargs)
        target = os.fspath(args[0] if crash_in == "_fsync" else args[1])  # the file or directory just written
        if os.path.isdir(target):
            target = os.path.join(target, "model.safetensors")
        if os.path.isfile(target):
            with open(target, "r+b") as f:
                f.truncate(10)  # the write was cut off
        raise Killed()
    monkeypatch.setattr(checkpoint, crash_in, crash)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, model, optimizer, {"step": 5})
    monkeypatch.undo()

    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert_checkpoint_has_step(tmp_path, 3, old_tensors)
    # the next save clears the half-written directory and succeeds
    save_checkpoint(tmp_path, model, optimizer, {"step": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert_checkpoint_has_step(tmp_path, 5, tensors_of(model))


def test_a_kill_between_the_renames_falls_back_to_checkpoint_old(tmp_path, monkeypatch):
    model, optimizer = trained_run()
    save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    old_tensors = tensors_of(model)
    train(model, optimizer, 2, first=3)

    real_rename, renames = os.rename, []
    def rename(src, dst):
        renames.append((os.path.basename(src), os.path.basename(dst)))
        if len(renames) == 2:
            raise Killed()
        real_rename(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, model, optimizer, {"step": 5})
    monkeypatch.undo()
    assert renames == [("checkpoint", "checkpoint.old"), ("checkpoint.tmp", "checkpoint")]

    assert not (tmp_path / "checkpoint").exists()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    assert_checkpoint_has_step(tmp_path, 3, old_tensors)
    optimizer_from_old = make_optimizer(GPT(tiny_config()))
    restore_optimizer(optimizer_from_old, tmp_path)
    assert optimizer_from_old.state_dict()["state"][0]["step"].item() == 3

    save_checkpoint(tmp_path, model, optimizer, {"step": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert_checkpoint_has_step(tmp_path, 5, tensors_of(model))


def test_a_kill_before_deleting_checkpoint_old_keeps_the_new_one(tmp_path, monkeypatch):
    model, optimizer = trained_run()
    save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    train(model, optimizer, 2, first=3)

    def rmtree(path, *args, **kwargs):
        os.remove(os.path.join(path, "model.safetensors"))  # deletion got this far
        raise Killed()
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, model, optimizer, {"step": 5})
    monkeypatch.undo()

    assert (tmp_path / "checkpoint.old").is_dir()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert_checkpoint_has_step(tmp_path, 5, tensors_of(model))
    save_checkpoint(tmp_path, model, optimizer, {"step": 6})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_find_checkpoint_accepts_a_model_directory_and_names_what_is_missing(tmp_path):
    model, optimizer = trained_run(steps=0)
    save_model(model, tmp_path / "vft")
    assert find_checkpoint(tmp_path / "vft") == tmp_path / "vft"
    save_checkpoint(tmp_path / "run", model, optimizer, {"step": 0})
    assert find_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint"
    assert find_checkpoint(tmp_path / "run" / "checkpoint") == tmp_path / "run" / "checkpoint"

    with pytest.raises(UserError) as info:
        find_checkpoint(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: no such checkpoint or run directory"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoint here .expected model.safetensors in it, in .*checkpoint or"):
        find_checkpoint(tmp_path / "empty")
    # a model saved by save_model alone is not a training checkpoint
    with pytest.raises(UserError, match=r"vft/trainer.json: not found"):
        load_checkpoint(tmp_path / "vft")


def corrupt(path, how):
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.write_text("{not json")


@pytest.mark.parametrize("name, how, call", [
    ("trainer.json", "garbage", "load"),
    ("trainer.json", "delete", "restore"),
    ("rng.safetensors", "delete", "load"),
    ("rng.safetensors", "truncate", "load"),
    ("optimizer.safetensors", "delete", "restore"),
    ("optimizer.safetensors", "truncate", "restore"),
])
def test_a_broken_file_is_a_user_error_naming_it(tmp_path, name, how, call):
    model, optimizer = trained_run(steps=1)
    directory = save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    corrupt(directory / name, how)
    with pytest.raises(UserError) as info:
        if call == "load":
            load_checkpoint(tmp_path)
        else:
            restore_optimizer(make_optimizer(model), tmp_path)
    assert str(info.value).startswith(f"{directory / name}: ")
    assert "\n" not in str(info.value)


def test_an_optimizer_for_another_model_is_rejected(tmp_path):
    model, optimizer = trained_run(steps=1)
    save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    wider, _ = trained_run(steps=0, n_embd=64)
    with pytest.raises(UserError, match=r"optimizer.safetensors: tensor 'state.0.exp_avg' has shape \(64, 32\), "
                                        r"which does not fit parameter 0 of shape \(64, 64\)"):
        restore_optimizer(make_optimizer(wider), tmp_path)
    one_group = torch.optim.AdamW(model.parameters())
    with pytest.raises(UserError, match=r"trainer.json: the saved optimizer has parameter groups of sizes"):
        restore_optimizer(one_group, tmp_path)


def test_state_must_be_json_safe_and_not_use_reserved_keys(tmp_path):
    model, optimizer = trained_run(steps=0)
    with pytest.raises(TypeError, match="JSON-safe"):
        save_checkpoint(tmp_path, model, optimizer, {"step": torch.tensor(1)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path, model, optimizer, {"rng": 1})
    with torch.no_grad():
        model.wte.weight[0, 0] = math.nan
    with pytest.raises(UserError, match="'wte.weight' holds NaN or inf"):
        save_checkpoint(tmp_path, model, optimizer, {"step": 0})
    assert list(tmp_path.iterdir()) == []  # each failed before writing anything


def test_nothing_is_pickled(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")
    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, optimizer = trained_run()
    save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    loaded, state = load_checkpoint(tmp_path)
    restore_optimizer(make_optimizer(loaded), tmp_path)
    restore_rng(state["rng"])
    for path in (tmp_path / "checkpoint").iterdir():
        assert not path.read_bytes().startswith(b"\x80"), path  # a pickle stream's first byte (protocol 2+)


@pytest.mark.parametrize("fail_in", ["save_file", "save_tokenizer"])
def test_a_write_error_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, enc, fail_in):
    model, optimizer = trained_run()
    tmp_path = tmp_path / "run"
    save_checkpoint(tmp_path, model, optimizer, {"step": 3}, enc=enc)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir()}
    train(model, optimizer, 1, first=3)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint, fail_in, full_disk)
    with pytest.raises(UserError, match="could not write the checkpoint .No space left on device.; the previous one"):
        save_checkpoint(tmp_path, model, optimizer, {"step": 4}, enc=enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # the temporary directory is gone
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir()} == before


def test_the_run_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    import fcntl
    import subprocess
    import sys
    run = tmp_path / "run"
    hold = ("import sys, time; from checkpoint import lock_run_dir; lock_run_dir(sys.argv[1]); print('locked', "
            "flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(checkpoint.__file__))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another run .pid {holder.pid}."):
            checkpoint.lock_run_dir(run)
    finally:
        holder.kill()  # a kill -9 leaves the lock file behind, but not the lock
        holder.wait()
    checkpoint.lock_run_dir(run)
    checkpoint.lock_run_dir(run)  # the holder itself may ask again
    assert (run / "run.lock").read_text() == f"{os.getpid()}\n"
    checkpoint.unlock_run_dir(run)
    with open(run / "run.lock") as f:  # released: anyone may take it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_unwritable_run_dir_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="file/run: cannot write in this directory"):
        checkpoint.lock_run_dir(tmp_path / "file" / "run")


def fake_hf(calls):
    """A stand-in for hf.py's convert: writes a nanoAFT model directory, as the real one does."""
    import types
    def convert(source, dest):
        calls.append(source)
        save_model(GPT(tiny_config()), dest)
        (dest / "tokenizer.tiktoken").write_bytes((source / "ranks.tiktoken").read_bytes())
        (dest / "tokenizer_info.json").write_text(json.dumps({
            "pattern": r"\S+|\s+", "special_tokens": {"<|endoftext|>": 63}, "eot_token": "<|endoftext|>",
            "bos_token": None}))
        return dest
    return types.SimpleNamespace(convert=convert)


def test_a_hugging_face_directory_is_converted_once_through_the_door(tmp_path, monkeypatch, enc):
    import sys
    source = tmp_path / "hf-model"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "llama"}))
    shutil.copy(tmp_path / "ranks.tiktoken", source / "ranks.tiktoken")
    calls = []
    monkeypatch.setitem(sys.modules, "hf", fake_hf(calls))
    monkeypatch.setenv("NANOAFT_CACHE", str(tmp_path / "cache"))
    model, loaded = checkpoint.load_model_and_tokenizer(source)
    assert calls == [source.resolve()] and loaded.eot_token == 63 and model.config == tiny_config()
    converted = checkpoint.model_directory(source)
    assert converted.parent == tmp_path / "cache" / "converted" and calls == [source.resolve()]  # reused
    assert checkpoint.fingerprints(source) == checkpoint.fingerprints(converted)
    (source / "extra.safetensors").write_bytes(b"")  # the source changed: converted again
    checkpoint.model_directory(source)
    assert len(calls) == 2
    assert checkpoint.model_directory(source, convert_to=tmp_path / "init") == tmp_path / "init"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("init")) == ["init"]
