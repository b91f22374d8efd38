"""train_sft.py and sequences.py: prompt masking, a tiny end-to-end run, exact resume, and bad input that
stops with a one-line error without touching an existing checkpoint."""

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configurator import UserError
from sequences import collate, encode_pair
from tokenizer import load_tokenizer
from train_sft import Config, batch_indices, learning_rate, train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **overrides):
    cfg = Config(n_train=200, n_layer=1, n_head=2, n_embd=32, block_size=256, batch_size=4, max_steps=6,
                 warmup_steps=2, log_every=2, eval_every=3, eval_examples=8, save_every=3, test_questions=4,
                 max_new_tokens=16, out_dir=str(tmp_path / "run"))
    return replace(cfg, **overrides)


def test_collate_masks_exactly_the_completion():
    pairs = [([1, 2, 3], [4, 5, 9]), ([6], [7, 9])]
    idx, targets, mask = collate(pairs, pad_id=0)
    # row 0: inputs 1 2 3 4 5 predict 2 3 4 5 9; the completion 4 5 9 is predicted from positions 2, 3, 4
    assert idx.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert targets.tolist() == [[2, 3, 4, 5, 9], [7, 9, 0, 0, 0]]
    assert mask.tolist() == [[False, False, True, True, True], [True, True, False, False, False]]


def test_encode_pair_never_makes_the_special_token_from_data():
    enc = load_tokenizer(str(REPO / "data" / "tokenizer.tiktoken"))
    prompt, completion = encode_pair(enc, "What is <|endoftext|>?", "It is 1 + 1 = 2.\n#### 2")
    assert enc.eot_token not in prompt and completion.count(enc.eot_token) == 1 and completion[-1] == enc.eot_token
    assert enc.decode(prompt) == "Question: What is <|endoftext|>?\nAnswer:\n"


def test_schedule_and_data_order():
    cfg = Config(max_steps=100, warmup_steps=10, learning_rate=1.0, min_lr=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1) and learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(100, cfg) == pytest.approx(0.1) and learning_rate(55, cfg) == pytest.approx(0.55)
    steps = [batch_indices(s, 4, 10, seed=3) for s in range(5)]  # 20 draws = two epochs of 10
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a fresh permutation each epoch
    assert batch_indices(3, 4, 10, seed=3) == steps[3]  # a pure function of the step


def test_tiny_run_end_to_end_then_evaluate(tmp_path):
    history = train(tiny_config(tmp_path))
    losses = [r["loss"] for r in history["train"]]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert [r["step"] for r in history["eval"]] == [3, 6]
    assert 0.0 <= history["test"]["accuracy"] <= 1.0 and history["test"]["n"] == 4
    ckpt = tmp_path / "run" / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.tiktoken",
                                                 "optimizer.safetensors", "trainer.json"}
    from evaluate import Config as EvalConfig, run
    metrics = run(EvalConfig(ckpt=str(tmp_path / "run"), n_questions=4, k=2, k_questions=2, max_new_tokens=16))
    assert set(metrics) >= {"t_acc", "gold_ppl", "maj@2", "rerank@2", "a_acc", "degeneration"}
    assert metrics["gold_ppl"] > 1.0
    assert json.loads((tmp_path / "run" / "eval_test.json").read_text())["t_acc"] == metrics["t_acc"]


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    full = tiny_config(tmp_path, out_dir=str(tmp_path / "full"), test_questions=0)
    train(full)
    part = replace(full, out_dir=str(tmp_path / "part"), stop_after=3)
    train(part)
    train(replace(part, stop_after=0, resume=True))
    a = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(str(tmp_path / "part" / "checkpoint" / "optimizer.safetensors"))
    d = load_file(str(tmp_path / "full" / "checkpoint" / "optimizer.safetensors"))
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_existing_checkpoint_is_never_overwritten_by_mistake(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, test_questions=0)
    train(cfg)
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(UserError, match="already holds a checkpoint"):
        train(cfg)
    with pytest.raises(UserError, match="--max_steps=5 differs"):
        train(replace(cfg, resume=True, max_steps=5))
    with pytest.raises(UserError, match="tokenizer"):
        train(replace(cfg, overwrite=True, tokenizer=str(tmp_path / "missing.tiktoken")))
    assert weights.read_bytes() == before


def run_script(*args, cwd):
    """`python train_sft.py args` in a fresh process (a second process holding the run lock needs one)."""
    return subprocess.run([sys.executable, str(REPO / "train_sft.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def run_main(*args, cwd, monkeypatch, capsys):
    """(exit status, stderr) of the command line `train_sft.py args`, run in this process from cwd: the same
    main() as the script's, without a new interpreter's start-up (a few seconds of torch import per case)."""
    from configurator import main
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(train, Config, list(args))
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--lerning_rate=1"], "did you mean --learning_rate?"),
    (["--max_steps=ten"], "--max_steps"),
    (["--dataset=gsm8k", "--data_dir=nowhere"], "nowhere"),
    (["--init_from=nowhere"], "nowhere"),
])
def test_bad_input_is_one_line_error(tmp_path, monkeypatch, capsys, args, message):
    status, err = run_main(*args, "--out_dir=out", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "a\\n#### 1"}\nnot json\n', "train.jsonl:2"),
    ('{"question": "q"}\n', "answer"),
    ('{"question": "q", "answer": "no final line"}\n', "####"),
    ("", "empty"),
])
def test_bad_jsonl_is_one_line_error(tmp_path, monkeypatch, capsys, content, message):
    (tmp_path / "train.jsonl").write_text(content)
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1"}\n')
    status, err = run_main("--dataset=gsm8k", f"--data_dir={tmp_path}", "--out_dir=out", cwd=tmp_path,
                           monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--batch_size=0"], "--batch_size=0: must be at least 1"),
    (["--learning_rate=nan"], "--learning_rate=nan: must be a finite number"),
    (["--learning_rate=inf"], "--learning_rate=inf: must be a finite number"),
    (["--learning_rate=0"], "--learning_rate=0.0: must be greater than 0"),
    (["--max_steps=0"], "--max_steps=0: must be at least 1"),
    (["--log_every=0"], "--log_every=0: must be at least 1"),
    (["--grad_clip=-1"], "--grad_clip=-1.0: must be at least 0"),
    (["--min_lr=1"], "--min_lr is above --learning_rate"),
    (["--out_dir="], "--out_dir must name a directory"),
    (["--tokenizer=missing.tiktoken"], "--tokenizer=missing.tiktoken: no such file or directory"),
    (["--device=cuda:7"] if not torch.cuda.is_available() else ["--device=nonsense"], "--device="),
    (["--dtype=float16"], "--dtype"),
    (["--parallel=zero"], "--parallel"),
])
def test_every_bad_flag_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    status, err = run_main(*([] if argv[0].startswith("--out_dir") else ["--out_dir=out"]) + argv, cwd=tmp_path,
                           monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the run directory


def test_a_config_is_validated_from_python_too(tmp_path):
    with pytest.raises(UserError, match="--batch_size=-1: must be at least 1"):
        train(tiny_config(tmp_path, batch_size=-1))
    with pytest.raises(UserError, match="--weight_decay=nan: must be a finite number"):
        train(tiny_config(tmp_path, weight_decay=float("nan")))
    assert not (tmp_path / "run").exists()


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import train_sft
    real = train_sft.learning_rate
    monkeypatch.setattr(train_sft, "learning_rate", lambda step, cfg: real(step, cfg) if step < 2 else math.nan)
    with pytest.raises(UserError, match=r"step [34]: loss .* gradient norm .*training diverged.*last checkpoint in"):
        train(tiny_config(tmp_path, save_every=2, test_questions=0))
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    saved = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert saved["step"] == 2


def test_nan_starting_weights_are_refused_before_training(tmp_path):
    from safetensors.torch import load_file, save_file
    train(tiny_config(tmp_path, out_dir=str(tmp_path / "base"), max_steps=1, test_questions=0))
    shutil.copytree(tmp_path / "base" / "checkpoint", tmp_path / "nan")
    tensors = load_file(tmp_path / "nan" / "model.safetensors")
    tensors["wte.weight"][0, 0] = float("nan")
    save_file(tensors, tmp_path / "nan" / "model.safetensors")  # written around save_model, which refuses NaN
    with pytest.raises(UserError, match="tensor 'wte.weight' holds NaN"):
        train(tiny_config(tmp_path, init_from=str(tmp_path / "nan")))
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    import fcntl
    import os
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / "run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        result = run_script("--out_dir=out", "--max_steps=1", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: out is in use by another run (pid 4242); wait for it to end or choose another --out_dir"]
    assert os.listdir(tmp_path / "out") == ["run.lock"]


def test_every_rng_is_seeded_and_the_config_is_not_changed(tmp_path):
    import random
    import numpy as np
    cfg = tiny_config(tmp_path, max_steps=1, test_questions=0)
    before = replace(cfg)
    train(cfg)
    assert cfg == before
    draws = random.random(), float(np.random.rand()), float(torch.rand(1))
    train(replace(cfg, overwrite=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws
