"""candidates.py, evaluate.py's pure metrics and train_align.py: hand-computed A-Acc and majority vote,
candidate groups (dedupe, labels, gold, fingerprint refusal), the objective per loss, a tiny end-to-end run."""

import json
from dataclasses import replace

import pytest
import torch

import candidates as cands
from configurator import UserError
from evaluate import assessment_accuracy, majority_vote
from test_train_sft import tiny_config
from train_align import Config, alignment_objective, check_config, train
from train_sft import train as train_sft


def test_assessment_accuracy_by_hand():
    scores = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -3.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    # group 0: positives -1, -2 vs negative -0.5: both lose -> 0 of 2
    # group 1: positive -1 vs negatives -1 (tie, 0.5) and -3 (win) -> 1.5 of 2
    acc, n = assessment_accuracy(scores, labels, valid)
    assert n == 4 and acc == pytest.approx(1.5 / 4)
    assert assessment_accuracy(scores, torch.ones_like(scores), valid) == (None, 0)


def test_majority_vote_ties_go_to_the_first_answer():
    assert majority_vote(["3", None, "4", "4", "3"]) == "3"
    assert majority_vote([None, "7", "5", "5"]) == "5"
    assert majority_vote([None, None]) is None


def test_config_defaults_and_errors():
    assert check_config(Config(loss="aft")).constraint == "bc"
    assert check_config(Config(loss="rrhf")).constraint == "none"
    assert check_config(Config(loss="dpo", constraint="dc")).out_dir == "out/align-dpo-dc"
    with pytest.raises(UserError, match="choose one of"):
        check_config(Config(loss="ppo"))
    with pytest.raises(UserError, match="constraint must be none"):
        check_config(Config(loss="rft", constraint="bc"))


def test_objective_selects_the_right_terms():
    scores = torch.tensor([[-0.5, -1.0, -0.2]], requires_grad=True)  # gold, correct sample, wrong sample
    info = {"valid": torch.tensor([[True, True, True]]), "correct": torch.tensor([[True, True, False]]),
            "gold": torch.tensor([[True, False, False]]), "grades": torch.tensor([[1.5, 1.5, 0.5]]),
            "ref_logps": torch.tensor([[-5.0, -10.0, -2.0]])}
    vft, parts = alignment_objective(check_config(Config(loss="vft")), scores, scores * 10, info)
    assert vft.item() == pytest.approx(0.5) and set(parts) == {"nll"}
    rft, _ = alignment_objective(check_config(Config(loss="rft")), scores, scores * 10, info)
    assert rft.item() == pytest.approx(0.75)
    cfg = check_config(Config(loss="aft", constraint="none", nll_on="gold"))
    aft, parts = alignment_objective(cfg, scores, scores * 10, info)
    # L_A = log(1 + exp(s_n - s_gold) + exp(s_n - s_sample)) = log(1 + e^0.3 + e^0.8)
    expected_ca = torch.log(1 + torch.exp(torch.tensor(0.3)) + torch.exp(torch.tensor(0.8))).item()
    assert parts["ca"].item() == pytest.approx(expected_ca) and parts["nll"].item() == pytest.approx(0.5)
    aft.backward()
    assert scores.grad[0, 2] > 0  # unconstrained: the negative is pushed down


@pytest.fixture(scope="module")
def vft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    train_sft(tiny_config(root, out_dir=str(root / "vft"), test_questions=0))
    return root


def test_candidate_groups_are_labelled_deduplicated_and_fingerprinted(vft_run):
    cfg = cands.Config(ckpt=str(vft_run / "vft"), n_questions=6, k=4, max_new_tokens=12,
                       temperature=1.0)
    groups, header = cands.build(cfg)
    assert len(groups) == 6 and header["fingerprint"]["model"]
    for g in groups:
        members = g["candidates"]
        assert members[0]["gold"] and members[0]["correct"] and members[0]["text"] == g["answer"]
        assert len({tuple(c["ids"]) for c in members}) == len(members) <= 5
        assert all(c["n_tokens"] == len(c["ids"]) and c["sum_logp"] < 0 for c in members)
        assert all(c["grade"] >= 1.0 if c["correct"] else c["grade"] < 1.0 for c in members)
    loaded, _ = cands.load_groups(vft_run / "vft" / "candidates.jsonl", vft_run / "vft")
    assert loaded == json.loads(json.dumps(groups))
    # another model's candidates are refused
    train_sft(tiny_config(vft_run, out_dir=str(vft_run / "other"), test_questions=0, seed=5))
    with pytest.raises(UserError, match="made by another model"):
        cands.load_groups(vft_run / "vft" / "candidates.jsonl", vft_run / "other")


@pytest.mark.parametrize("loss, constraint", [("aft_rank", "bc"), ("dpo", "dc")])
def test_tiny_alignment_run(vft_run, loss, constraint):
    cfg = Config(loss=loss, constraint=constraint, vft=str(vft_run / "vft"), n_questions=6, k=4,
                 batch_size=2, max_steps=3, log_every=1, test_questions=4, k_questions=2, max_new_tokens=16,
                 out_dir=str(vft_run / f"align-{loss}"))
    if not (vft_run / "vft" / "candidates.jsonl").exists():
        cands.build(cands.Config(ckpt=str(vft_run / "vft"), n_questions=6, k=4, max_new_tokens=12))
    history = train(cfg)
    assert len(history["train"]) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history["train"])
    assert set(history["metrics"]) == {"vft", "aligned"}
    assert {"t_acc", "a_acc_train"} <= set(history["metrics"]["aligned"])
    with pytest.raises(UserError, match="already holds a checkpoint"):
        train(replace(cfg))
    with pytest.raises(UserError, match="not written by the sft trainer"):
        train_sft(tiny_config(vft_run, out_dir=cfg.out_dir, resume=True))


def test_check_config_returns_a_new_config_and_leaves_the_given_one_alone():
    import losses
    cfg = Config(loss="pro", constraint="bc")
    checked = check_config(cfg)
    assert checked.out_dir == "out/align-pro-bc" and cfg.out_dir == "" and cfg.constraint == "bc"
    assert Config().beta == losses.BETA
    for bad, message in [(dict(beta=float("nan")), "--beta=nan: must be a finite number"),
                         (dict(lam=float("inf")), "--lam=inf"), (dict(k=0), "--k=0: must be at least 1"),
                         (dict(batch_size=0), "--batch_size=0"), (dict(constraint="hard"), "--constraint=hard"),
                         (dict(eval_split="train"), "--eval_split=train")]:
        with pytest.raises(UserError, match=message):
            check_config(Config(**bad))


def test_baselines_get_the_boundary_term_with_bc_and_detach_the_worse_with_dc():
    scores = torch.tensor([[-0.5, -1.0, -0.2]], requires_grad=True)
    info = {"valid": torch.tensor([[True, True, True]]), "correct": torch.tensor([[True, True, False]]),
            "gold": torch.tensor([[True, False, False]]), "grades": torch.tensor([[1.5, 1.5, 0.5]]),
            "ref_logps": torch.tensor([[-5.0, -10.0, -2.0]])}
    for loss in ("rrhf", "pro", "dpo"):
        _, parts = alignment_objective(check_config(Config(loss=loss, constraint="bc")), scores, scores * 10, info)
        assert set(parts) == {loss, "bc"} and parts["bc"].shape == (1,)
        _, parts = alignment_objective(check_config(Config(loss=loss)), scores, scores * 10, info)
        assert set(parts) == {loss}
    total, _ = alignment_objective(check_config(Config(loss="dpo", constraint="dc")), scores, scores * 10, info)
    (grad,) = torch.autograd.grad(total.sum(), scores)
    assert grad[0, 2] == 0 and grad[0, 0] < 0  # the loser is detached; the winners are pushed up


def test_an_explicit_vft_path_is_never_trained_into(tmp_path):
    cfg = Config(vft=str(tmp_path / "typo"), out_dir=str(tmp_path / "align"))
    with pytest.raises(UserError, match="--vft=.*typo: no VFT checkpoint there"):
        train(cfg)
    with pytest.raises(UserError, match="--candidates=.*missing.jsonl: no such file"):
        train(replace(cfg, vft="out/vft", candidates=str(tmp_path / "missing.jsonl")))
    assert list(tmp_path.iterdir()) == []


def test_no_sampled_metrics_and_no_training_groups_when_k_questions_is_0(vft_run):
    if not (vft_run / "vft" / "candidates.jsonl").exists():
        cands.build(cands.Config(ckpt=str(vft_run / "vft"), n_questions=6, k=4, max_new_tokens=12))
    history = train(Config(vft=str(vft_run / "vft"), n_questions=6, k=4, batch_size=2, max_steps=1, test_questions=2,
                           k_questions=0, max_new_tokens=8, out_dir=str(vft_run / "align-k0")))
    assert "a_acc_train" not in history["metrics"]["aligned"] and "maj@4" not in history["metrics"]["aligned"]
