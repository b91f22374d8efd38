"""
Step 3 of AFT: continue training the VFT model on its own candidate groups with a constraint alignment loss.

    python train_align.py --loss=aft_rank                # builds out/vft and its candidates first if missing
    python train_align.py --loss=aft --constraint=dc
    python train_align.py --loss=dpo --constraint=bc --beta_dpo=0.1
    torchrun --standalone --nproc_per_node=8 train_align.py --grad_accum=2 ...   # several GPUs (compute.py)

Each step scores the candidates (gold chain + unique samples) of `batch_size` questions in one forward and
minimises the mean over questions of L_NLL + lambda L_CA (aft, aft_rank), L_NLL (rft, vft) or a baseline (rrhf,
pro, dpo) plus, with bc, the boundary term (docs/method.md). The end prints both models' metrics side by side.
"""

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import candidates as cands
import compute
import losses
import train_sft
from checkpoint import (find_checkpoint, has_checkpoint, load_model_and_tokenizer, lock_run_dir, restore_training,
                        resume_or_start, save_run, seed_rng, unlock_run_dir, whole_model)
from configurator import UserError, bounded, check_path, config_to_dict, main, write_output
from data.dataset import TASK_FIELDS, run_config, run_task
from evaluate import Config as EvalConfig, evaluate_model, format_table
from sequences import collate, encode_pair, fits

LOSSES = ("vft", "rft", "aft", "aft_rank", "dpo", "rrhf", "pro")


@dataclass
class Config(train_sft.TrainConfig):
    loss: str = field(default="aft_rank", metadata={"choices": LOSSES})  # the training objective
    constraint: str = field(default="", metadata={"choices": ("",) + losses.CONSTRAINTS})  # "": bc for aft*, else none
    beta: float = bounded(losses.BETA, above=0)  # boundary margin of bc, in nats of mean log-prob (losses.BETA)
    beta_dpo: float = bounded(0.1, above=0)  # DPO's inverse temperature
    lam: float = bounded(1.0, min=0)  # weight lambda of the alignment term (aft, aft_rank) [paper: 1]
    nll_on: str = field(default="positives", metadata={"choices": ("positives", "gold", "none")})  # aft's L_NLL [ours]
    vft: str = "out/vft"            # VFT run directory; only this default one is built when missing (a typo is not)
    candidates: str = ""            # candidate file; "" = <vft>/candidates.jsonl (built when missing)
    n_questions: int = bounded(1200, min=1)  # training questions to sample candidates for
    k: int = bounded(8, min=1)      # samples per question
    temperature: float = bounded(0.8, above=0)  # sampling temperature for candidates
    max_candidates: int = bounded(9, min=2, max=1024)  # candidates per group at most (gold first, then samples)
    k_questions: int = bounded(200, min=0)  # questions for maj@k, rerank@k and test A-Acc at the end
    eval_split: str = field(default="test", metadata={"choices": ("test", "val")})  # final metrics' split (val: tuning)
    batch_size: int = bounded(8, min=1)  # questions (groups) per step, over all processes
    max_steps: int = bounded(150, min=1)  # optimiser steps
    learning_rate: float = bounded(1e-4, above=0, max=100)  # peak AdamW learning rate
    min_lr: float = bounded(1e-5, min=0, max=100)  # cosine floor
    warmup_steps: int = bounded(20, min=0)  # linear warm-up
    weight_decay: float = bounded(0.0, min=0)  # AdamW decay on matrices
    out_dir: str = ""               # "" = out/align-<loss>-<constraint>
    log_every: int = bounded(25, min=1)  # steps between progress lines
    save_every: int = bounded(75, min=1)  # steps between checkpoints


def check_config(cfg):
    """The config with its defaults resolved (constraint, out_dir), or a UserError; `cfg` itself is not changed."""
    constraint = cfg.constraint or ("bc" if cfg.loss in ("aft", "aft_rank") else "none")  # baselines: as published
    suffix = "" if cfg.loss in ("vft", "rft") else f"-{constraint}"
    resolved = replace(cfg, constraint=constraint, out_dir=cfg.out_dir or f"out/align-{cfg.loss}{suffix}")
    train_sft.check_config(resolved)
    if cfg.loss in ("vft", "rft") and constraint != "none":
        raise UserError(f"--loss={cfg.loss} has no preference term, so --constraint must be none")
    if cfg.vft != Config.vft and not has_checkpoint(cfg.vft):
        raise UserError(f"--vft={cfg.vft}: no VFT checkpoint there (python train_sft.py --out_dir={cfg.vft})")
    if cfg.candidates and not check_path(cfg.candidates, "candidates").is_file():
        raise UserError(f"--candidates={cfg.candidates}: no such file (python candidates.py --ckpt={cfg.vft})")
    return resolved


def ensure_prerequisites(cfg):
    """The VFT run and its candidate file's path: reused when present, built (with a note) when missing at defaults."""
    if not has_checkpoint(cfg.vft):
        compute.log(f"prerequisite: no VFT run in {cfg.vft}; training one (python train_sft.py)")
        train_sft.train(train_sft.Config(out_dir=cfg.vft))
    path = Path(cfg.candidates or Path(cfg.vft) / "candidates.jsonl")
    if not path.is_file():
        compute.log(f"prerequisite: no candidates at {path}; sampling them (python candidates.py)")
        cands.build(cands.Config(ckpt=cfg.vft, out=str(path), n_questions=cfg.n_questions, k=cfg.k,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, device=cfg.device,
                                 dtype=cfg.dtype))
    return path


def group_batch(groups, enc, K, device):
    """One step's tensors over B groups of at most K candidates: (idx, targets, mask) over the real candidates only
    (no padding rows are computed), and (B, K) tensors valid, correct, grades, gold, ref_logps (the VFT model's S)."""
    pairs = [(encode_pair(enc, g["question"], "")[0], c["ids"]) for g in groups for c in g["candidates"][:K]]
    info = {name: torch.zeros(len(groups), K) for name in ("valid", "correct", "grades", "gold", "ref_logps")}
    for b, group in enumerate(groups):
        for j, c in enumerate(group["candidates"][:K]):
            info["valid"][b, j], info["correct"][b, j], info["grades"][b, j] = 1, float(c["correct"]), c["grade"]
            info["gold"][b, j], info["ref_logps"][b, j] = float(c["gold"]), c["sum_logp"]
    info = {k: (v.bool() if k in ("valid", "correct", "gold") else v).to(device) for k, v in info.items()}
    return collate(pairs, enc.eot_token, device), info


def to_groups(values, valid):
    """Row values (N,) -> (B, K), zeros where not valid, graph kept (rows in row-major order of valid)."""
    return torch.zeros(valid.shape, dtype=values.dtype, device=values.device).masked_scatter(valid, values)


def alignment_objective(cfg, scores, logps, info):
    """Per-question loss (B,) of cfg.loss and its parts {name: (B,)}. scores s and logps S are (B, K)."""
    valid, grades, dc = info["valid"], info["grades"], cfg.constraint == "dc"
    parts = {}
    if cfg.loss in ("vft", "rft") or cfg.loss in ("aft", "aft_rank") and cfg.nll_on != "none":  # none: L_CA alone
        gold_only = cfg.loss == "vft" or (cfg.loss != "rft" and cfg.nll_on == "gold")
        selected = info["gold"] if gold_only else info["gold"] | info["correct"]
        parts["nll"] = losses.nll_loss(scores, valid & selected)
    if cfg.loss == "aft":
        parts["ca"] = cfg.lam * losses.alignment_loss(scores, info["correct"].float(), valid, cfg.constraint, cfg.beta)
    elif cfg.loss == "aft_rank":
        parts["ca"] = cfg.lam * losses.ranking_alignment_loss(scores, grades, valid, cfg.constraint, cfg.beta)
    elif cfg.loss == "rrhf":
        parts["rrhf"] = losses.rrhf_loss(scores, grades, valid, detach_worse=dc)
    elif cfg.loss == "pro":
        parts["pro"] = losses.pro_loss(scores, grades, valid, detach_worse=dc)
    elif cfg.loss == "dpo":
        parts["dpo"] = losses.dpo_loss(logps, info["ref_logps"], grades, valid, cfg.beta_dpo, detach_worse=dc)
    if cfg.loss in ("rrhf", "pro", "dpo") and cfg.constraint == "bc":
        parts["bc"] = losses.boundary_loss(scores, grades, valid, cfg.beta)
    return sum(parts.values()), parts


def score_stats(scores, valid, correct):
    """Mean s of positives and of negatives, and the mean margin s_p - s_n over the pairs within groups."""
    pos, neg = valid & correct, valid & ~correct
    margin = (scores[:, :, None] - scores[:, None, :])[pos[:, :, None] & neg[:, None, :]]  # one per (p, n) pair
    mean = lambda x: float(x.mean()) if x.numel() else float("nan")  # noqa: E731
    return {"s_pos": mean(scores[pos]), "s_neg": mean(scores[neg]), "margin": mean(margin)}


def metrics_of(model, enc, test, train_groups, cfg):
    """Test metrics plus A-Acc on the (already seen) training groups."""
    config = EvalConfig(n_questions=cfg.test_questions, k_questions=cfg.k_questions, max_new_tokens=cfg.max_new_tokens)
    with compute.autocast(next(model.parameters()).device, cfg.dtype):
        return evaluate_model(model, enc, test, config, train_groups)


def vft_metrics(vft_dir, fingerprint, cfg, enc, test, train_groups, device):
    """Metrics of the VFT model, cached next to it (keyed by its weights and the evaluation settings)."""
    cache = Path(cfg.vft) / "eval_vft.json"
    key = {"model": fingerprint, "split": cfg.eval_split, "n": cfg.test_questions, "k_questions": cfg.k_questions,
           "groups": len(train_groups), "max_new_tokens": cfg.max_new_tokens, "dtype": cfg.dtype}
    if cache.is_file() and (saved := json.loads(cache.read_text())).get("key") == key:
        return saved["metrics"]
    metrics = metrics_of(load_model_and_tokenizer(vft_dir, device)[0], enc, test, train_groups, cfg)
    write_output(cache, json.dumps({"key": key, "metrics": metrics}, indent=1) + "\n")  # a cut file is never read
    return metrics


def train(cfg):
    """Align the VFT model with cfg.loss; returns the history (train records and final metrics). Under torchrun
    every process trains its share of each batch; only rank 0 prints, saves and evaluates."""
    cfg = check_config(cfg)
    device = compute.init(cfg.device)
    must_match = ("loss", "constraint", "max_steps", "batch_size", "seed", "learning_rate", "beta")
    resumed = resume_or_start(cfg.out_dir, cfg, "align", must_match, device)  # reads only
    if compute.is_main():
        lock_run_dir(cfg.out_dir)  # before any work: one run per directory, and it is writable
    path, vft_dir = ensure_prerequisites(cfg), find_checkpoint(cfg.vft)
    seed_rng(cfg.seed)
    model, enc = load_model_and_tokenizer(vft_dir, device)  # read first: a broken model file is named as such,
    groups, header = cands.load_groups(path, cfg.vft, enc.n_vocab, lambda g: all(  # another model's are not taken,
        fits((encode_pair(enc, g["question"], "")[0], c["ids"]), model.config.block_size) for c in g["candidates"]))
    task = {key: value for key, value in run_config(vft_dir).items() if key in TASK_FIELDS}  # saved with the run
    model, state = resumed or (model, {"step": 0, "history": {"train": []}})
    compute.log(f"align: loss={cfg.loss} constraint={cfg.constraint} beta={cfg.beta} on {len(groups)} groups, "
                f"{compute.world_size()} process(es), steps {state['step']}..{cfg.max_steps} -> {cfg.out_dir}")
    model, trainee = compute.prepare(model, cfg, device)  # DDP / FSDP, activation checkpointing, compile
    optimizer = train_sft.make_optimizer(model, cfg, device)
    if cfg.resume:
        restore_training(model, optimizer, cfg.out_dir, state)  # AdamW's moments and every RNG
    history = state["history"]

    def save(step, full=None):  # every rank calls it (gathering shards is collective); rank 0 writes
        run_state = {"kind": "align", "step": step, "config": {**config_to_dict(cfg), **task}, "history": history,
                     "candidates_fingerprint": header["fingerprint"]}
        return save_run(cfg.out_dir, model, optimizer, run_state, enc, full)

    start, last, full, t0 = state["step"], min(cfg.stop_after or cfg.max_steps, cfg.max_steps), None, time.time()
    parts, seen, window = {}, [], []  # since the last progress line, whose figures are means over those steps
    for step in range(start, last):
        lr = train_sft.learning_rate(step, cfg)
        batch = [groups[i] for i in train_sft.batch_indices(step, cfg.batch_size, len(groups), cfg.seed)]
        loss = 0.0
        for m, micro in enumerate(compute.micro_batches(batch, cfg.grad_accum)):  # the whole batch in one process
            (idx, targets, mask), info = group_batch(micro, enc, cfg.max_candidates, device)
            with compute.gradient_sync(model, m == cfg.grad_accum - 1), compute.autocast(device, cfg.dtype):
                # ---- where scores become the loss ----
                logits, _ = trainee(idx)  # (N, T, V), one row per real candidate
                sum_logp, n_tokens = losses.sequence_logprobs(logits, targets, mask)  # (N,) S, (N,) |c|
                logps = to_groups(sum_logp, info["valid"])  # (b, K) S
                scores = to_groups(losses.mean_logprob(sum_logp, n_tokens), info["valid"])  # (b, K) s
                question_loss, question_parts = alignment_objective(cfg, scores, logps, info)  # (b,) each
                micro_loss = question_loss.sum() / cfg.batch_size  # the mean over the global batch's questions
                micro_loss.backward()  # micro-batches and processes add up to the whole batch's gradient
            loss += micro_loss.detach()
            for name, value in question_parts.items():
                parts[name] = parts.get(name, 0.0) + value.detach().sum() / cfg.batch_size
            seen.append(torch.stack([scores.detach(), info["valid"].float(), info["correct"].float()], dim=-1))
        window.append(train_sft.apply_gradients(model, optimizer, cfg, step, loss, lr))

        done = step + 1
        if done % cfg.log_every == 0 or done == last:  # every rank: the sums below are collectives
            summed = compute.sum_across(torch.stack([parts[name].float().cpu() for name in sorted(parts)])).tolist()
            scores_all, valid_all, correct_all = compute.gather_rows(torch.cat(seen)).unbind(dim=-1)  # (B, K) each
            means = {k: v / len(window) for k, v in [("loss", sum(window)), *zip(sorted(parts), summed)]}
            record = {"step": done, **means, **score_stats(scores_all, valid_all.bool(), correct_all.bool()), "lr": lr}
            history["train"].append(record)
            parts, seen, window = {}, [], []
            shown = " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("step", "lr"))
            compute.log(f"step {done:4d}/{cfg.max_steps} | {shown} | lr {lr:.1e} | "
                        f"{compute.progress(t0, done - start, last - done)}")
        if done % cfg.save_every == 0 or done == last:
            full = save(done)

    if last == cfg.max_steps and cfg.test_questions > 0 and compute.is_main():
        plain = whole_model(model, cfg.out_dir, device).eval()  # rank 0 alone from here
        test, train_groups = run_task(vft_dir)[cfg.eval_split], groups[:cfg.k_questions]
        before = vft_metrics(cfg.vft, header["fingerprint"]["model"], cfg, enc, test, train_groups, device)
        history["metrics"] = {"vft": before, "aligned": metrics_of(plain, enc, test, train_groups, cfg)}
        compute.log(format_table({"VFT": before, f"{cfg.loss}/{cfg.constraint}": history["metrics"]["aligned"]}))
        save(last, full)
    unlock_run_dir(cfg.out_dir)
    compute.barrier()  # the ranks leave together: none tears the process group down under another's feet
    return history


if __name__ == "__main__":
    main(train, Config)
    compute.finish()  # under torchrun: leave together, skipping a teardown that can abort
