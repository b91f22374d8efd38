"""
Step 3 of AFT: continue training the VFT model on its own candidate groups with a constraint alignment loss.

    python train_align.py --loss=aft_rank                # builds out/vft and its candidates first if missing
    python train_align.py --loss=aft --constraint=dc
    python train_align.py --loss=dpo --constraint=bc --beta_dpo=0.1
    torchrun --standalone --nproc_per_node=8 train_align.py --grad_accum=2 ...   # several GPUs (distributed.py)

Every step takes `batch_size` questions with their candidates (gold chain + unique samples), scores all of
them in one batched forward (s = mean log-prob of the chain, S = its sum) and minimises
    L = L_NLL + lambda * L_CA                        (aft, aft_rank) [paper]
    L = L_NLL on gold + positives                     (rft) [paper]
    L = RRHF / PRO (each with its own L_NLL(best))    (rrhf, pro) [paper]
    L = DPO against the frozen VFT scores             (dpo) [paper]
    L = L_NLL on the gold chain only                  (vft: the "more training" control) [ours]
where the preference losses take --constraint = none | dc | bc (losses.py, PAPER.md sections 4-6).
It ends by printing the metrics of the VFT model and the aligned model side by side. The tokenizer is the VFT
run's own (ours, or the Hugging Face one of a model started from one) and is copied into every checkpoint.
`--dtype=bfloat16` runs the forward passes under bf16 autocast (sequences.py).
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import candidates as cands
import distributed
import train_sft
from checkpoint import find_checkpoint, has_checkpoint, read_optimizer_state, restore_rng, resume_or_start, save_checkpoint
from configurator import UserError, config_to_dict, main
from data.dataset import run_config, run_task
from evaluate import Config as EvalConfig
from evaluate import evaluate_model, format_table, group_assessment
from hf import load_tokenizer_of, tokenizer_files
from losses import (alignment_loss, dpo_loss, mean_logprob, nll_loss, pro_loss, questions_with_pair,
                    ranking_alignment_loss, rrhf_loss, sequence_logprobs)
from model import load_model
from sequences import DTYPES, autocast, collate, encode_pair

LOSSES = ("vft", "rft", "aft", "aft_rank", "dpo", "rrhf", "pro")
# The fields of a train_sft.py config that say which task it is (data.dataset.task_from_config reads them).
TASK_FIELDS = ("dataset", "data_dir", "data_seed", "n_train", "min_chain_steps", "max_chain_steps", "max_factor",
               "max_number")
DEFAULT_CONSTRAINT = {"aft": "bc", "aft_rank": "bc", "dpo": "none", "rrhf": "none", "pro": "none"}


@dataclass
class Config:
    loss: str = "aft_rank"          # vft | rft | aft | aft_rank | dpo | rrhf | pro
    constraint: str = ""            # none | dc | bc; "" = the loss's default (aft, aft_rank: bc; dpo, rrhf, pro: none)
    beta: float = 0.05              # boundary margin of bc, in nats of mean log-prob [ours; tuned on val, README]
    beta_dpo: float = 0.1           # DPO's inverse temperature
    lam: float = 1.0                # weight lambda of the alignment term (aft, aft_rank) [paper: 1]
    nll_on: str = "positives"       # L_NLL on "positives" (gold + correct samples) or "gold" only [ours]
    # prerequisites (built when missing)
    vft: str = "out/vft"            # VFT run directory
    candidates: str = ""            # candidate file; "" = <vft>/candidates.jsonl
    n_questions: int = 1200         # training questions to sample candidates for (one pass at the defaults)
    k: int = 8                      # samples per question
    temperature: float = 0.8        # sampling temperature for candidates
    # optimisation
    batch_size: int = 8             # questions (groups) per step
    max_steps: int = 150            # optimiser steps
    learning_rate: float = 1e-4     # peak AdamW learning rate
    min_lr: float = 1e-5            # cosine floor
    warmup_steps: int = 20          # linear warm-up
    weight_decay: float = 0.0       # AdamW decay on matrices
    grad_clip: float = 1.0          # max gradient norm (0 = off)
    max_candidates: int = 9         # candidates per group at most (gold first, then samples)
    grad_accum: int = 1             # micro-batches per step in each process (batch_size = processes x grad_accum x micro)
    # scale and speed (distributed.py)
    parallel: str = field(default="ddp", metadata={"choices": distributed.PARALLEL})  # under torchrun: replicas or shards
    checkpoint_activations: bool = False  # recompute each block's activations in backward: less memory, more compute
    compile: bool = False           # torch.compile the model (~15 s to compile on a CPU for ~6%; pays off on GPUs)
    # bookkeeping
    out_dir: str = ""               # "" = out/align-<loss>-<constraint>
    log_every: int = 25             # steps between progress lines
    save_every: int = 75            # steps between checkpoints
    test_questions: int = 1000      # greedy accuracy / gold PPL questions at the end (0 = skip evaluation)
    k_questions: int = 200          # questions for maj@k, rerank@k and test A-Acc at the end
    eval_split: str = "test"        # split for the final metrics: "test", or "val" while tuning
    max_new_tokens: int = 160       # generation budget in the evaluation
    resume: bool = False            # continue the run in out_dir
    overwrite: bool = False         # replace an existing checkpoint in out_dir
    stop_after: int = 0             # end this invocation after this step; --resume continues
    seed: int = 1337                # data-order seed
    device: str = "auto"            # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": DTYPES})  # bfloat16: autocast (sequences.py)


def check_config(cfg):
    if cfg.loss not in LOSSES:
        raise UserError(f"--loss={cfg.loss}: choose one of {', '.join(LOSSES)}")
    if cfg.constraint == "":
        cfg.constraint = DEFAULT_CONSTRAINT.get(cfg.loss, "none")
    if cfg.constraint not in ("none", "dc", "bc"):
        raise UserError(f"--constraint={cfg.constraint}: choose one of none, dc, bc")
    if cfg.loss in ("vft", "rft") and cfg.constraint != "none":
        raise UserError(f"--loss={cfg.loss} has no preference term, so --constraint must be none")
    if cfg.nll_on not in ("positives", "gold"):
        raise UserError(f"--nll_on={cfg.nll_on}: choose positives or gold")
    if cfg.eval_split not in ("test", "val"):
        raise UserError(f"--eval_split={cfg.eval_split}: choose test or val")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be > 0, got {cfg.beta}")
    if not cfg.out_dir:
        cfg.out_dir = f"out/align-{cfg.loss}" + ("" if cfg.loss in ("vft", "rft") else f"-{cfg.constraint}")
    return cfg


def ensure_prerequisites(cfg):
    """The VFT checkpoint and its candidate groups: reused when present, built (with a note) when missing."""
    vft_dir = Path(cfg.vft)
    if not has_checkpoint(vft_dir):
        distributed.log(f"prerequisite: no VFT checkpoint in {vft_dir}; training one first (python train_sft.py "
                        f"--out_dir={vft_dir})", flush=True)
        train_sft.train(train_sft.Config(out_dir=str(vft_dir)))
    path = Path(cfg.candidates) if cfg.candidates else vft_dir / "candidates.jsonl"
    if not path.is_file():
        distributed.log(f"prerequisite: no candidates at {path}; sampling them (python candidates.py "
                        f"--ckpt={vft_dir})", flush=True)
        cands.build(cands.Config(ckpt=str(vft_dir), out=str(path), n_questions=cfg.n_questions, k=cfg.k,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                 device=cfg.device, dtype=cfg.dtype))
    groups, header = cands.load_groups(path, vft_dir)
    distributed.log(f"candidates: {path} {json.dumps(header.get('summary', {}))}", flush=True)
    return groups, header


def group_labels(groups, max_candidates):
    """(B, K) tensors describing B groups of at most K candidates (gold first): valid, correct, grades, gold, and
    the reference S of each candidate (ref_logps)."""
    B, K = len(groups), max_candidates
    info = {name: torch.zeros(B, K) for name in ("valid", "correct", "grades", "gold", "ref_logps")}
    for b, group in enumerate(groups):
        for j, c in enumerate(group["candidates"][:K]):
            info["valid"][b, j] = 1
            info["correct"][b, j] = float(c["correct"])
            info["grades"][b, j] = c["grade"]
            info["gold"][b, j] = float(c["gold"])
            info["ref_logps"][b, j] = c["sum_logp"]
    for name in ("valid", "correct", "gold"):
        info[name] = info[name].bool()
    return info


def group_batch(groups, enc, max_candidates, device):
    """Tensors for one step over B groups of at most K candidates. Only real candidates become rows (no
    padding rows are computed); `info["valid"]` (B, K) says where each row's score goes.
    Returns (idx, targets, mask) over the rows, and the (B, K) tensors of `group_labels`."""
    pairs = [(encode_pair(enc, group["question"], "")[0], c["ids"])
             for group in groups for c in group["candidates"][:max_candidates]]
    idx, targets, mask = collate(pairs, enc.eot_token, device)
    return (idx, targets, mask), {k: v.to(device) for k, v in group_labels(groups, max_candidates).items()}


def to_groups(values, valid):
    """Row values (N,) -> (B, K) with zeros where valid is False, keeping the graph (rows are in row-major
    order of valid, as group_batch lists them)."""
    return torch.zeros(valid.shape, dtype=values.dtype, device=values.device).masked_scatter(valid, values)


def nll_selection(cfg, info):
    """The candidates L_NLL is a mean over: the gold chain (vft, or --nll_on=gold), else gold + positives."""
    if cfg.loss == "vft" or (cfg.loss != "rft" and cfg.nll_on == "gold"):
        return info["valid"] & info["gold"]
    return info["valid"] & (info["gold"] | info["correct"])


def alignment_objective(cfg, scores, logps, info):
    """The training loss of cfg.loss and its parts (for logging). scores s and logps S are (B, K)."""
    valid, correct, grades = info["valid"], info["correct"], info["grades"]
    parts = {}
    if cfg.loss in ("vft", "rft", "aft", "aft_rank"):
        parts["nll"] = nll_loss(scores, nll_selection(cfg, info))
    if cfg.loss in ("aft", "aft_rank"):
        if cfg.loss == "aft":
            ca = alignment_loss(scores, correct.float(), valid, cfg.constraint, cfg.beta)
        else:
            ca = ranking_alignment_loss(scores, grades, valid, cfg.constraint, cfg.beta)
        parts["ca"] = cfg.lam * ca
    elif cfg.loss == "rrhf":
        parts["rrhf"] = rrhf_loss(scores, grades, valid, cfg.constraint, cfg.beta)
    elif cfg.loss == "pro":
        parts["pro"] = pro_loss(scores, grades, valid, cfg.constraint, cfg.beta)
    elif cfg.loss == "dpo":
        parts["dpo"] = dpo_loss(logps, info["ref_logps"], grades, valid, cfg.beta_dpo, cfg.constraint,
                                scores=scores, beta=cfg.beta)
    return sum(parts.values()), parts


def part_sizes(cfg, info):
    """How many items each part of alignment_objective is a mean over: selected candidates for L_NLL, questions
    with an ordered pair for a preference term. A batch split into micro-batches (gradient accumulation, several
    processes) weighs each micro-batch's part by its share of these, which recombines the whole batch's loss."""
    sizes = {}
    if cfg.loss in ("vft", "rft", "aft", "aft_rank"):
        sizes["nll"] = int(nll_selection(cfg, info).sum())
    if cfg.loss in ("aft", "aft_rank", "rrhf", "pro", "dpo"):
        grades = info["correct"].float() if cfg.loss == "aft" else info["grades"]
        sizes["ca" if cfg.loss in ("aft", "aft_rank") else cfg.loss] = int(questions_with_pair(grades, info["valid"]).sum())
    return sizes


def score_stats(scores, info):
    """Mean s of positives and negatives, and the mean pairwise margin s_p - s_n within groups."""
    valid, correct = info["valid"], info["correct"]
    pos, neg = valid & correct, valid & ~correct
    s = scores.detach()
    pairs = pos[:, :, None] & neg[:, None, :]  # (B, K, K)
    margin = (s[:, :, None] - s[:, None, :])[pairs]
    mean = lambda x: float(x.mean()) if x.numel() else float("nan")  # noqa: E731
    return {"s_pos": mean(s[pos]), "s_neg": mean(s[neg]), "margin": mean(margin)}


def prepare(cfg, device, vft_dir):
    """(model, state): the run to resume, or the VFT model for a fresh start (checkpoint.resume_or_start)."""
    resumed = resume_or_start(cfg.out_dir, cfg, "align",
                              ("loss", "constraint", "max_steps", "batch_size", "seed", "learning_rate", "beta"), device)
    return resumed or (load_model(vft_dir, device), {"step": 0, "history": {"train": []}})


def vft_task(vft_dir):
    """The task fields of the VFT run's config. They are saved in the aligned run's config too, so that
    evaluate.py and candidates.py find the same task for the aligned model (data.dataset.run_task)."""
    saved = run_config(vft_dir)
    return {key: saved[key] for key in TASK_FIELDS if key in saved}


def evaluation_config(cfg):
    return EvalConfig(n_questions=cfg.test_questions, k_questions=cfg.k_questions, max_new_tokens=cfg.max_new_tokens)


def all_metrics(model, enc, test, train_groups, cfg):
    """Test metrics plus A-Acc on the (already seen) training groups."""
    with autocast(next(model.parameters()).device, cfg.dtype):
        metrics = evaluate_model(model, enc, test, evaluation_config(cfg))
        metrics.update(group_assessment(model, enc, train_groups))
    return metrics


def vft_metrics(vft_dir, model_fp, cfg, enc, test, train_groups, device):
    """Metrics of the VFT model, cached next to it (keyed by its weights and the evaluation settings)."""
    cache = Path(cfg.vft) / "eval_vft.json"
    key = {"model": model_fp, "split": cfg.eval_split, "n": cfg.test_questions, "k_questions": cfg.k_questions, "groups": len(train_groups),
           "max_new_tokens": cfg.max_new_tokens}
    if cfg.dtype != "float32":
        key["dtype"] = cfg.dtype  # float32 keys stay as caches written before --dtype existed
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["metrics"]
    metrics = all_metrics(load_model(vft_dir, device), enc, test, train_groups, cfg)
    cache.write_text(json.dumps({"key": key, "metrics": metrics}, indent=1) + "\n")
    return metrics


def train(cfg):
    """Align the VFT model with cfg.loss; returns the history (train records and final metrics).
    Under torchrun every process trains its share of each batch (distributed.py); only rank 0 prints, saves and
    evaluates."""
    cfg = check_config(cfg)
    device = distributed.init(cfg.device)
    distributed.check(cfg)
    groups, header = ensure_prerequisites(cfg)
    vft_dir = find_checkpoint(cfg.vft)
    enc, tokenizer_sources = load_tokenizer_of(vft_dir), tokenizer_files(vft_dir)
    model, state = prepare(cfg, device, vft_dir)
    model, trainee = train_sft.prepare_model(model, cfg, device)
    optimizer = train_sft.make_optimizer(model, cfg, device)
    if cfg.resume:
        distributed.load_optimizer_state(model, optimizer, read_optimizer_state(optimizer, cfg.out_dir))
        restore_rng(state["rng"])
    history = state["history"]
    distributed.log(f"align: loss={cfg.loss} constraint={cfg.constraint} beta={cfg.beta} on {len(groups)} groups, "
                    f"{distributed.world_size()} process(es) x {cfg.grad_accum} micro-batch(es), "
                    f"steps {state['step']}..{cfg.max_steps} -> {cfg.out_dir}", flush=True)

    def save(step, full=None):
        """Checkpoint from rank 0; returns the full (weights, optimizer state) so a later save can reuse them."""
        full = full or distributed.full_state(model, optimizer)
        if distributed.is_main():
            save_checkpoint(cfg.out_dir, distributed.unwrap(model), optimizer,
                            {"kind": "align", "step": step, "config": {**config_to_dict(cfg), **vft_task(vft_dir)},
                             "history": history, "candidates_fingerprint": header["fingerprint"]},
                            tokenizer_files=tokenizer_sources, weights=full[0], optimizer_state=full[1])
        return full

    model.train()
    start_step, last = state["step"], min(cfg.stop_after or cfg.max_steps, cfg.max_steps)
    t0, full = time.time(), None
    for step in range(start_step, last):
        lr = train_sft.learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [groups[i] for i in train_sft.batch_indices(step, cfg.batch_size, len(groups), cfg.seed)]
        totals = part_sizes(cfg, group_labels(batch, cfg.max_candidates))  # over the whole (global) batch
        micro = distributed.micro_batches(batch, cfg.grad_accum)
        step_parts, seen = {}, []
        for m, chunk in enumerate(micro):
            (idx, targets, mask), info = group_batch(chunk, enc, cfg.max_candidates, device)
            with distributed.gradient_sync(model, m == len(micro) - 1):
                with autocast(device, cfg.dtype):
                    logits, _ = trainee(idx)  # (N, T, V), N real candidates
                    total, count = sequence_logprobs(logits, targets, mask)  # (N,), (N,) float32
                logps = to_groups(total, info["valid"])  # (b, K) S
                scores = to_groups(mean_logprob(total, count), info["valid"])  # (b, K) s
                _, parts = alignment_objective(cfg, scores, logps, info)
                sizes = part_sizes(cfg, info)
                sum(parts[name] * distributed.scale(sizes[name], totals[name]) for name in parts).backward()
            for name, value in parts.items():  # this micro-batch's share of the whole batch's part
                share = value.detach() * sizes[name] / max(totals[name], 1)
                step_parts[name] = step_parts.get(name, 0) + share
            stats = [scores.detach(), info["valid"].float(), info["correct"].float()]
            seen.append(torch.stack(stats, dim=-1))  # (b, K, 3)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if done % cfg.log_every == 0 or done == last:  # every rank: the sums below are collectives
            names = sorted(step_parts)
            sums = distributed.sum_across(torch.stack([step_parts[name].float() for name in names]))
            parts_all = dict(zip(names, sums.tolist()))
            scores_all, valid_all, correct_all = distributed.gather_rows(torch.cat(seen)).unbind(dim=-1)  # (B, K) each
            elapsed = time.time() - t0
            eta = elapsed / (done - start_step) * (last - done)
            record = {"step": done, "loss": sum(parts_all.values()), **parts_all,
                      **score_stats(scores_all, {"valid": valid_all.bool(), "correct": correct_all.bool()}), "lr": lr}
            history["train"].append(record)
            shown = " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("step", "lr"))
            distributed.log(f"step {done:4d}/{cfg.max_steps} | {shown} | lr {lr:.1e} | elapsed "
                            f"{train_sft.format_seconds(elapsed)} | eta {train_sft.format_seconds(eta)}", flush=True)
        if done % cfg.save_every == 0 or done == last:
            full = save(done)

    if last == cfg.max_steps and cfg.test_questions > 0:
        full = full or distributed.full_state(model, optimizer)  # a collective: before rank 0 goes on alone
    if last == cfg.max_steps and cfg.test_questions > 0 and distributed.is_main():
        plain = distributed.whole_model(model, cfg.out_dir, device).eval()  # rank 0 alone from here
        task = run_task(vft_dir)
        test, train_groups = task[cfg.eval_split], groups[:cfg.k_questions]
        aligned = all_metrics(plain, enc, test, train_groups, cfg)
        before = vft_metrics(vft_dir, header["fingerprint"]["model"], cfg, enc, test, train_groups, device)
        history["metrics"] = {"vft": before, "aligned": aligned}
        distributed.log(format_table({"VFT": before, f"{cfg.loss}/{cfg.constraint}": aligned}), flush=True)
        save(last, full)
    distributed.barrier()  # the ranks leave together: none tears the process group down under another's feet
    return history


if __name__ == "__main__":
    main(train, Config)
    distributed.finish()  # under torchrun: leave together, skipping a teardown that can abort
