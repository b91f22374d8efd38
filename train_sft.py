"""
Step 1 of AFT: vanilla fine-tuning (VFT) on chain-of-thought data with the token-level NLL of the COT (prompt
masked), L_VFT = -(1/|c|) sum_j log p(c_j | q, c_<j), averaged over the batch [paper] (docs/method.md).

    python train_sft.py                                  # a fresh small model, the built-in task, a laptop CPU
    python train_sft.py --resume                         # continue a stopped run exactly
    torchrun --standalone --nproc_per_node=8 train_sft.py --parallel=fsdp ...   # several GPUs (compute.py)
    history = train(Config(max_steps=100))               # from Python (a notebook)
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import compute
from checkpoint import (load_model_and_tokenizer, load_tokenizer_of, lock_run_dir, restore_training, resume_or_start,
                        save_run, seed_rng, unlock_run_dir, whole_model)
from configurator import UserError, bounded, check_input, config_to_dict, main, validate
from data.dataset import TASK_FIELDS, TaskConfig, task_from_config
from evaluate import greedy_accuracy
from losses import mean_logprob, nll_loss, sequence_logprobs
from model import GPT, ModelConfig, num_params
from sequences import collate, encode_pair, fits, score_pairs
from tokenizer import load_tokenizer


@dataclass
class TrainConfig:  # what every trainer shares (train_align.Config extends it with other defaults)
    batch_size: int = bounded(32, min=1)  # examples per optimiser step, over all processes
    max_steps: int = bounded(800, min=1)  # optimiser steps
    learning_rate: float = bounded(3e-3, above=0, max=100)  # peak AdamW learning rate
    min_lr: float = bounded(3e-4, min=0, max=100)  # cosine schedule floor
    warmup_steps: int = bounded(100, min=0)  # linear warm-up steps
    weight_decay: float = bounded(0.1, min=0)  # AdamW decay on matrices and embeddings (not norms or biases)
    grad_clip: float = bounded(1.0, min=0)  # max global gradient norm (0 = off)
    grad_accum: int = bounded(1, min=1)  # micro-batches per step in each process
    parallel: str = field(default="ddp", metadata={"choices": compute.PARALLEL})  # under torchrun: replicas or shards
    checkpoint_activations: bool = False  # recompute each block's activations in backward: less memory, more compute
    compile: bool = False           # torch.compile the training forwards (pays off on GPUs)
    out_dir: str = "out/vft"        # run directory: checkpoint/, run.lock
    log_every: int = bounded(50, min=1)  # steps between progress lines
    save_every: int = bounded(400, min=1)  # steps between checkpoints (the last step is always saved)
    test_questions: int = bounded(1000, min=0)  # test questions evaluated at the end (0 = skip)
    max_new_tokens: int = bounded(160, min=1)  # generation budget of that evaluation
    resume: bool = False            # continue the run in out_dir from its checkpoint
    overwrite: bool = False         # allow replacing an existing checkpoint in out_dir with a new run
    stop_after: int = bounded(0, min=0)  # end this invocation after this step (0 = run to max_steps)
    seed: int = bounded(1337, min=0)  # seed of initialisation, data order and every other draw
    device: str = "auto"            # "auto", "cpu", "cuda", ...
    dtype: str = field(default="float32", metadata={"choices": compute.DTYPES})  # bfloat16: autocast (compute.py)


@dataclass
class Config(TaskConfig, TrainConfig):  # the fields of TrainConfig, then TaskConfig's (data/dataset.py), then these
    tokenizer: str = "data/tokenizer.tiktoken"  # BPE rank file of a fresh model (init_from brings its own)
    init_from: str = ""             # "" = a fresh model; a nanoAFT run/model or a Hugging Face one (-> out_dir/init)
    n_layer: int = bounded(4, min=1)  # transformer blocks (fresh model)
    n_head: int = bounded(4, min=1)  # attention heads (fresh model)
    n_embd: int = bounded(128, min=1)  # width (fresh model)
    block_size: int = bounded(384, min=8)  # longest prompt + COT in tokens (init_from: the model's own)
    eval_every: int = bounded(400, min=0)  # steps between validation-loss evaluations (0 = only at the end)
    eval_examples: int = bounded(256, min=1)  # validation pairs for the eval loss


def check_config(cfg):
    """Refuse, before any work, what `validate` cannot see alone: paths, and settings that contradict each other."""
    validate(cfg)
    compute.check(cfg)  # the batch splits into the processes' micro-batches
    if not cfg.out_dir or cfg.min_lr > cfg.learning_rate:
        raise UserError("--out_dir must name a directory" if not cfg.out_dir else "--min_lr is above --learning_rate")
    if isinstance(cfg, Config):  # train_sft's own inputs (train_align's are checked there); init_from "" = fresh
        check_input(cfg.tokenizer, "tokenizer", shipped=True)
        if cfg.init_from:
            check_input(cfg.init_from, "init_from")


def batch_indices(step, batch_size, n, seed):
    """The examples of one step: consecutive slices of a fresh permutation per epoch, a pure function of the
    step, so a resumed run sees exactly the data an uninterrupted one would."""
    indices = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        if not indices or i % n == 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed((seed * 100_003 + i // n) % 2 ** 64))
        indices.append(perm[i % n].item())
    return indices


def learning_rate(step, cfg):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model, cfg, device):
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), fused=device.startswith("cuda"))


def apply_gradients(model, optimizer, cfg, step, loss, lr):
    """Clip and take the optimiser step at learning rate lr; returns the step's loss summed over processes. A
    non-finite loss or gradient norm stops the run before the step, so the last checkpoint stays the last good one."""
    norm = float(compute.clip_grad_norm(model, cfg.grad_clip or math.inf))
    loss = compute.sum_across(loss.detach().float().cpu()).item()
    if not math.isfinite(loss + norm):
        raise UserError(f"step {step + 1}: loss {loss}, gradient norm {norm}: training diverged (a lower "
                        f"--learning_rate?); stopped, the last checkpoint in {cfg.out_dir} is kept")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def train(cfg):
    """Run VFT; returns the history (train / eval records, final test metrics). Under torchrun every process
    trains its share of each batch; only rank 0 prints, saves and measures the test accuracy."""
    check_config(cfg)
    device = compute.init(cfg.device)
    task = task_from_config(config_to_dict(cfg))
    must_match = ("max_steps", "batch_size", "seed", "learning_rate") + TASK_FIELDS  # else another run
    resumed = resume_or_start(cfg.out_dir, cfg, "sft", must_match, device)  # reads only
    if compute.is_main():
        lock_run_dir(cfg.out_dir)  # before any work: one run per directory, and it is writable
    seed_rng(cfg.seed)
    state = {"step": 0, "history": {"train": [], "eval": []}}
    if resumed:
        (model, state), enc = resumed, load_tokenizer_of(cfg.out_dir)
    elif cfg.init_from:
        model, enc = load_model_and_tokenizer(cfg.init_from, device, convert_to=Path(cfg.out_dir) / "init")
    else:
        enc = load_tokenizer(check_input(cfg.tokenizer, "tokenizer", shipped=True))
        model = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                block_size=cfg.block_size)).to(device)
    pairs = {split: [p for p in (encode_pair(enc, ex["question"], ex["answer"]) for ex in examples)
                     if fits(p, model.config.block_size)]  # (prompt, COT) pairs; what does not fit is left out
             for split, examples in (("train", task["train"]), ("val", task["val"][:cfg.eval_examples]))}
    if not pairs["train"] or not pairs["val"]:
        raise UserError(f"no training or validation pair fits in the model's block_size {model.config.block_size}")
    compute.log(f"VFT: {num_params(model):,} parameters, {len(pairs['train']):,} of {len(task['train']):,} training "
                f"pairs fit, {compute.world_size()} process(es) on {device}, steps {state['step']}..{cfg.max_steps}")
    model, trainee = compute.prepare(model, cfg, device)  # DDP / FSDP, activation checkpointing, compile
    optimizer = make_optimizer(model, cfg, device)
    if cfg.resume:
        restore_training(model, optimizer, cfg.out_dir, state)  # AdamW's moments and every RNG
    history = state["history"]

    def save(step, full=None):  # every rank calls it (gathering shards is collective); rank 0 writes
        run_state = {"kind": "sft", "step": step, "config": config_to_dict(cfg), "history": history}
        return save_run(cfg.out_dir, model, optimizer, run_state, enc, full)

    start, last, full, t0 = state["step"], min(cfg.stop_after or cfg.max_steps, cfg.max_steps), None, time.time()
    for step in range(start, last):
        lr = learning_rate(step, cfg)
        batch = [pairs["train"][i] for i in batch_indices(step, cfg.batch_size, len(pairs["train"]), cfg.seed)]
        loss = 0.0
        for m, micro in enumerate(compute.micro_batches(batch, cfg.grad_accum)):  # the whole batch in one process
            idx, targets, mask = collate(micro, enc.eot_token, device)  # mask: the COT's tokens, not the prompt's
            with compute.gradient_sync(model, m == cfg.grad_accum - 1), compute.autocast(device, cfg.dtype):
                logits, _ = trainee(idx)  # (b, T, V)
                scores = mean_logprob(*sequence_logprobs(logits, targets, mask))[:, None]  # (b, 1) s(c)
                micro_loss = nll_loss(scores, torch.ones_like(scores, dtype=torch.bool)).sum() / cfg.batch_size
                micro_loss.backward()  # gradients of micro-batches (and processes) add up to the batch mean's
            loss += micro_loss.detach()
        loss = apply_gradients(model, optimizer, cfg, step, loss, lr)

        done = step + 1
        if done % cfg.log_every == 0 or done == last:
            history["train"].append({"step": done, "loss": loss, "lr": lr})
            compute.log(f"step {done:5d}/{cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                        f"{compute.progress(t0, done - start, last - done)}")
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps:
            with torch.no_grad(), compute.autocast(device, cfg.dtype):  # every rank: FSDP forwards need them all
                sum_logp, n_tokens = score_pairs(compute.unwrap(model), pairs["val"], enc.eot_token, cfg.batch_size)
            history["eval"].append({"step": done, "val_loss": -mean_logprob(sum_logp, n_tokens).mean().item()})
            compute.log(f"step {done:5d} | val loss {history['eval'][-1]['val_loss']:.4f}")
        if done % cfg.save_every == 0 or done == last:
            full = save(done)

    if last == cfg.max_steps and cfg.test_questions > 0 and compute.is_main():
        plain = whole_model(model, cfg.out_dir, device).eval()  # rank 0 alone from here
        with compute.autocast(device, cfg.dtype):
            metrics = greedy_accuracy(plain, enc, task["test"][:cfg.test_questions], cfg.max_new_tokens)
        history["test"] = {k: v for k, v in metrics.items() if k != "outputs"}
        compute.log(f"test: greedy accuracy {metrics['accuracy']:.3f} on {metrics['n']} questions, "
                    f"degeneration {metrics['degeneration']:.3f}")
        save(last, full)
    unlock_run_dir(cfg.out_dir)
    compute.barrier()  # the ranks leave together: none tears the process group down under another's feet
    return history


if __name__ == "__main__":
    main(train, Config)
    compute.finish()  # under torchrun: leave together, skipping a teardown that can abort
