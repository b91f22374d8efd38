"""compute.py on CPU with the gloo backend: 2 processes under torchrun take the same steps as 1 process with
the same global batch (DDP, FSDP2, gradient accumulation), a checkpoint written by 2 processes resumes in 1,
candidate sampling is split across ranks and gathered back in question order, and micro-batches recombine every
alignment objective exactly."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import candidates as cands
from candidates import interleave
from test_train_sft import tiny_config
from train_align import Config as AlignConfig
from train_align import alignment_objective, check_config
from train_align import train as train_align
from train_sft import train as train_sft

REPO = Path(__file__).resolve().parents[1]
TINY = dict(batch_size=8, max_steps=4, warmup_steps=2, log_every=2, eval_every=0, save_every=2, test_questions=2)


def flags(**values):
    return [f"--{key}={value}" for key, value in values.items()]


def torchrun(script, *args):
    """Run a script in 2 gloo processes; returns its output (fails the test with it when the run fails)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[:6000]
    return run.stdout


def sft_flags(cfg):
    return flags(n_train=cfg.n_train, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                 block_size=cfg.block_size, eval_examples=cfg.eval_examples, max_new_tokens=cfg.max_new_tokens,
                 **TINY)


def weights(run_dir):
    return load_file(str(Path(run_dir) / "checkpoint" / "model.safetensors"))


def assert_same_weights(a, b, atol=2e-5):
    a, b = weights(a), weights(b)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: 4 VFT steps of batch 8 in this process."""
    root = tmp_path_factory.mktemp("dist")
    cfg = tiny_config(root, out_dir=str(root / "one"), **TINY)
    history = train_sft(cfg)
    return root, cfg, history


def test_ddp_two_processes_take_the_steps_of_one(one_process):
    root, cfg, history = one_process
    out = torchrun("train_sft.py", *sft_flags(cfg), f"--out_dir={root / 'ddp'}")
    assert_same_weights(root / "one", root / "ddp")
    assert out.count("step     4/4 |") == 1  # rank 0 alone prints
    # the logged loss is the loss of the whole global batch, not of rank 0's half
    saved = json.loads((root / "ddp" / "checkpoint" / "trainer.json").read_text())["history"]
    assert [r["loss"] for r in saved["train"]] == pytest.approx([r["loss"] for r in history["train"]], abs=1e-5)
    assert saved["test"]["accuracy"] == history["test"]["accuracy"]  # measured by rank 0 after training


def test_fsdp_with_accumulation_checkpoints_move_between_1_and_2_processes(one_process):
    root, cfg, _ = one_process
    # 2 processes x 2 micro-batches of 2 pairs, sharded; stopped after step 2 ...
    torchrun("train_sft.py", *sft_flags(cfg), "--parallel=fsdp", "--grad_accum=2", "--stop_after=2",
             f"--out_dir={root / 'fsdp'}")
    saved = weights(root / "fsdp")
    assert saved["blocks.0.attn.qkv_proj.weight"].shape == (96, 32)  # the full tensor, not one rank's shard
    # ... step 3 by one plain process from that checkpoint (model, optimizer state, step) ...
    train_sft(replace(cfg, out_dir=str(root / "fsdp"), resume=True, stop_after=3, save_every=1))
    # ... and step 4 sharded again over 2 processes, the optimizer state split from the 1-process file
    torchrun("train_sft.py", *sft_flags(cfg), "--parallel=fsdp", "--resume", f"--out_dir={root / 'fsdp'}")
    assert_same_weights(root / "one", root / "fsdp")


def test_batch_must_split_evenly(one_process):
    root, cfg, _ = one_process
    from configurator import UserError
    with pytest.raises(UserError, match="--batch_size=6 must be a multiple of 1 processes x --grad_accum=4"):
        train_sft(replace(cfg, batch_size=6, grad_accum=4, out_dir=str(root / "bad")))
    with pytest.raises(UserError, match="--parallel=zero: choose one of ddp, fsdp"):
        train_sft(replace(cfg, parallel="zero", out_dir=str(root / "bad")))
    assert not (root / "bad").exists()


def test_finish_leaves_a_process_alone_outside_torchrun():
    # finish() ends a torchrun process with os._exit; in a notebook or this test process it must do nothing
    # (were it to exit, pytest itself would stop here)
    import compute
    assert not compute.launched()
    assert compute.finish() is None


@pytest.mark.parametrize("loss, constraint, nll_on", [("aft", "bc", "positives"), ("aft_rank", "dc", "gold"),
                                                      ("rrhf", "bc", "positives"), ("pro", "none", "positives"),
                                                      ("dpo", "bc", "positives"), ("rft", "none", "positives")])
def test_micro_batches_recombine_the_whole_batch_objective(loss, constraint, nll_on):
    """Every objective is per question, so the sum over micro-batches of (sum of their questions' losses) / B is the
    whole batch's mean and gradient (what the trainer does over micro-batches and ranks), even with groups that
    hold no pair at all."""
    torch.manual_seed(0)
    cfg = check_config(AlignConfig(loss=loss, constraint=constraint, nll_on=nll_on))
    B, K = 6, 4
    valid = torch.rand(B, K) < 0.8
    valid[:, 0] = True
    info = {"valid": valid, "gold": torch.zeros(B, K, dtype=torch.bool), "grades": torch.rand(B, K).round(decimals=1),
            "ref_logps": -10 * torch.rand(B, K)}
    info["gold"][:, 0] = True
    info["correct"] = info["gold"] | (torch.rand(B, K) < 0.3)
    info["correct"][4], info["grades"][4] = True, 1.0  # a group of equal positives: no pair
    logps = (-20 * torch.rand(B, K)).requires_grad_()
    scores = logps / 10
    whole, parts = alignment_objective(cfg, scores, logps, info)
    assert whole.shape == (B,) and all(value[4] == 0 for name, value in parts.items() if name != "nll")  # no pair
    whole = whole.sum() / B
    (whole_grad,) = torch.autograd.grad(whole, logps, retain_graph=True)

    combined = 0
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):  # uneven on purpose
        micro = {name: value[rows] for name, value in info.items()}
        per_question, _ = alignment_objective(cfg, scores[rows], logps[rows], micro)
        combined = combined + per_question.sum() / B
    (combined_grad,) = torch.autograd.grad(combined, logps)
    assert combined.item() == pytest.approx(whole.item(), abs=1e-6)
    torch.testing.assert_close(combined_grad, whole_grad, atol=1e-7, rtol=1e-5)


def test_interleave_undoes_the_round_robin_split():
    items = list(range(7))
    assert interleave([items[r::3] for r in range(3)]) == items
    assert interleave([items]) == items


def test_alignment_and_candidates_on_two_processes(one_process):
    root, cfg, _ = one_process
    vft = root / "one"
    # candidates: 2 processes each sample half the questions; the file comes back in question order and the
    # gold chains' reference scores equal the 1-process ones
    single, _ = cands.build(cands.Config(ckpt=str(vft), n_questions=8, k=4, max_new_tokens=12,
                                         out=str(root / "c1.jsonl")))
    torchrun("candidates.py", f"--ckpt={vft}", "--n_questions=8", "--k=4", "--max_new_tokens=12",
             f"--out={vft / 'candidates.jsonl'}")
    split, _ = cands.load_groups(vft / "candidates.jsonl", vft)
    assert [g["question"] for g in split] == [g["question"] for g in single]
    assert [g["candidates"][0]["sum_logp"] for g in split] == pytest.approx(
        [g["candidates"][0]["sum_logp"] for g in single], abs=1e-4)

    # alignment: 2 processes x 2 micro-batches of 1 group == 1 process with the whole batch of 4 groups
    acfg = AlignConfig(loss="aft_rank", vft=str(vft), batch_size=4, max_steps=3, warmup_steps=1, log_every=3,
                       save_every=3, test_questions=0, learning_rate=1e-3, out_dir=str(root / "align-one"))
    history = train_align(acfg)
    torchrun("train_align.py", *flags(loss="aft_rank", vft=vft, batch_size=4, max_steps=3, warmup_steps=1,
                                      log_every=3, save_every=3, test_questions=0, learning_rate=1e-3,
                                      grad_accum=2, out_dir=root / "align-two"))
    assert_same_weights(root / "align-one", root / "align-two")
    two = json.loads((root / "align-two" / "checkpoint" / "trainer.json").read_text())["history"]["train"]
    for key in ("loss", "nll", "ca", "s_pos", "s_neg", "margin"):
        assert two[-1][key] == pytest.approx(history["train"][-1][key], abs=1e-5), key
