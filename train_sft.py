"""
Step 1 of AFT: vanilla fine-tuning (VFT) on chain-of-thought data.

Every (question, reference COT) pair is trained with the paper's token-level NLL, prompt tokens masked out:
L_VFT = -(1/|c|) sum_j log p(c_j | q, c_<j), averaged over the batch [paper]. On the built-in task the model
starts from scratch (our default small LLaMA-style model, over the --tokenizer rank file); `--init_from=DIR`
fine-tunes an existing one, a nanoAFT run or model directory or a Hugging Face one (config.json,
model.safetensors or shards, tokenizer files), with its own tokenizer and context length (block_size).
The checkpoint carries that tokenizer's files, so every later stage and `python hf.py --ckpt=RUN --out=DIR`
read it back.

    python train_sft.py                                  # built-in task, ~4 minutes on a 2-core CPU
    python train_sft.py --max_steps=200 --out_dir=out/quick
    python train_sft.py --resume                         # continue a stopped run exactly
    python train_sft.py --dataset=gsm8k --data_dir=data/gsm8k --init_from=path/to/SmolLM2-135M --dtype=bfloat16 ...
    torchrun --standalone --nproc_per_node=8 train_sft.py --parallel=fsdp ...   # several GPUs (distributed.py)

Pairs longer than the model's block_size are left out, with a count printed (never on the built-in task with
the defaults; on GSM8K only with a model of a few hundred positions). From Python (a notebook):
`history = train(Config(max_steps=100))`. docs/gsm8k_gpu.md has a full GSM8K recipe for one GPU.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import distributed
from checkpoint import read_optimizer_state, restore_rng, resume_or_start, save_checkpoint
from configurator import UserError, config_to_dict, main
from data.dataset import task_from_config
from evaluate import greedy_accuracy
from hf import load_model_and_tokenizer, load_tokenizer_of, tokenizer_files
from losses import mean_logprob, nll_loss, sequence_logprobs
from model import GPT, ModelConfig, num_params
from sequences import DTYPES, autocast, collate, encode_pair, fits
from tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parent


@dataclass
class Config:
    # data
    dataset: str = "synth"          # "synth": the built-in generated task; "gsm8k": train/test jsonl in data_dir
    data_dir: str = ""              # directory holding train.jsonl and test.jsonl (gsm8k)
    n_train: int = 30000            # generated training problems (synth)
    data_seed: int = 0              # seed of the generated task (the same task for every training seed)
    min_chain_steps: int = 2        # difficulty (synth): fewest reasoning steps per problem
    max_chain_steps: int = 4        # difficulty (synth): most reasoning steps per problem
    max_factor: int = 12            # difficulty (synth): largest multiplier, divisor, price or count
    max_number: int = 40            # difficulty (synth): largest amount that is only added or subtracted
    tokenizer: str = "data/tokenizer.tiktoken"  # BPE rank file of a fresh model (init_from brings its own)
    # model (a fresh one; ignored with init_from)
    init_from: str = ""             # "" = a fresh model; else a run or model directory (nanoAFT or Hugging Face)
    n_layer: int = 4                # transformer blocks
    n_head: int = 4                 # attention heads
    n_embd: int = 128               # width
    block_size: int = 384           # longest prompt + COT in tokens (init_from: the model's own)
    # optimisation
    batch_size: int = 32            # (question, COT) pairs per step
    max_steps: int = 800            # optimiser steps (~4 minutes on a 2-core CPU)
    learning_rate: float = 3e-3     # peak AdamW learning rate
    min_lr: float = 3e-4            # cosine schedule floor
    warmup_steps: int = 100         # linear warm-up steps
    weight_decay: float = 0.1       # AdamW decay on matrices and embeddings (not norms or biases)
    grad_clip: float = 1.0          # max global gradient norm (0 = off)
    grad_accum: int = 1             # micro-batches per step in each process (batch_size = processes x grad_accum x micro)
    # scale and speed (distributed.py)
    parallel: str = field(default="ddp", metadata={"choices": distributed.PARALLEL})  # under torchrun: replicas or shards
    checkpoint_activations: bool = False  # recompute each block's activations in backward: less memory, more compute
    compile: bool = False           # torch.compile the model (~15 s to compile on a CPU for ~6%; pays off on GPUs)
    # bookkeeping
    out_dir: str = "out/vft"        # run directory: checkpoint/, history.json
    log_every: int = 50             # steps between progress lines
    eval_every: int = 400           # steps between validation-loss evaluations (0 = only at the end)
    eval_examples: int = 256        # validation pairs for the eval loss
    save_every: int = 400           # steps between checkpoints (the last step is always saved)
    test_questions: int = 1000      # greedy test accuracy on this many questions at the end (0 = skip)
    max_new_tokens: int = 160       # generation budget for the final accuracy
    resume: bool = False            # continue the run in out_dir from its checkpoint
    overwrite: bool = False         # allow replacing an existing checkpoint in out_dir with a new run
    stop_after: int = 0             # end this invocation after this step (0 = run to max_steps); --resume continues
    seed: int = 1337                # initialisation and data-order seed
    device: str = "auto"            # "auto", "cpu", "cuda", ...
    dtype: str = field(default="float32", metadata={"choices": DTYPES})  # bfloat16: autocast (sequences.py)


def resolve(path):
    """A relative path that does not exist from here is looked up in the repository (data/ ships there)."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else REPO / path


def batch_indices(step, batch_size, n, seed):
    """The examples of one step: consecutive slices of a fresh permutation per epoch, a pure function of the
    step, so a resumed run sees exactly the data an uninterrupted one would."""
    indices = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch = i // n
        if not indices or i % n == 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(perm[i % n].item())
    return indices


def learning_rate(step, cfg):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.learning_rate - cfg.min_lr)


def prepare_model(model, cfg, device):
    """(model, trainee): the model with activation checkpointing as asked, under DDP or FSDP when launched by
    torchrun; and what the training forwards go through, the same or its torch.compile'd version. Only training
    is compiled: generation's ever-changing shapes would recompile at every step."""
    model.checkpoint_activations = cfg.checkpoint_activations
    model = distributed.wrap(model, cfg.parallel, device)
    return model, (torch.compile(model) if cfg.compile else model)


def make_optimizer(model, cfg, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), fused=device.startswith("cuda"))


def pair_loss(model, pairs, pad_id, device):
    """L_VFT of a batch: the mean over pairs of -s(c), s = mean log-prob of the COT's tokens [paper]."""
    idx, targets, mask = collate(pairs, pad_id, device)
    logits, _ = model(idx)  # (B, T, V)
    total, count = sequence_logprobs(logits, targets, mask)  # (B,), (B,)
    scores = mean_logprob(total, count)  # (B,) s(c)
    return nll_loss(scores, torch.ones_like(scores, dtype=torch.bool)), int(count.sum())


@torch.no_grad()
def eval_loss(model, pairs, pad_id, device, batch_size):
    model.eval()
    losses = [pair_loss(model, pairs[i:i + batch_size], pad_id, device)[0].item()
              for i in range(0, len(pairs), batch_size)]
    model.train()
    return sum(losses) / max(1, len(losses))


def format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


# a resumed run must keep these, or it would not continue the same run
RESUME_MUST_MATCH = ("max_steps", "batch_size", "seed", "learning_rate", "dataset", "data_dir", "n_train", "data_seed",
                     "min_chain_steps", "max_chain_steps", "max_factor", "max_number")


def prepare_run(cfg, device):
    """Validate everything and build (model, tokenizer, tokenizer files, state) before anything is written to
    out_dir: a resumed run's own checkpoint; the --init_from model with its own tokenizer; or a fresh model over
    the --tokenizer rank file, whose vocabulary is the tokenizer's (its ranks plus end-of-text)."""
    out = Path(cfg.out_dir)
    resumed = resume_or_start(out, cfg, "sft", RESUME_MUST_MATCH, device)
    if resumed:
        model, state = resumed
        return model, load_tokenizer_of(out), tokenizer_files(out), state  # the checkpoint's own tokenizer
    fresh = {"step": 0, "history": {"train": [], "eval": []}}
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model, enc = load_model_and_tokenizer(cfg.init_from, device)
        return model, enc, tokenizer_files(cfg.init_from), fresh
    tokenizer_path = resolve(cfg.tokenizer)
    enc = load_tokenizer(str(tokenizer_path))
    model = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                            block_size=cfg.block_size)).to(device)
    return model, enc, tokenizer_path, fresh


def encode_fitting(enc, examples, block_size):
    """(prompt, COT) pairs of the examples that fit in block_size tokens, and how many did not."""
    pairs = [encode_pair(enc, ex["question"], ex["answer"]) for ex in examples]
    kept = [pair for pair in pairs if fits(pair, block_size)]
    return kept, len(pairs) - len(kept)


def train(cfg):
    """Run VFT with `cfg`; returns the history dict (train / eval records and the final test metrics).
    Under torchrun every process trains its share of each batch (distributed.py); only rank 0 prints, saves and
    measures the final test accuracy."""
    device = distributed.init(cfg.device)
    distributed.check(cfg)
    task = task_from_config(config_to_dict(cfg))
    model, enc, tokenizer_sources, state = prepare_run(cfg, device)
    if model.config.vocab_size < enc.n_vocab:
        raise UserError(f"the tokenizer has {enc.n_vocab} tokens but the model only {model.config.vocab_size}")
    block_size = model.config.block_size
    train_pairs, too_long = encode_fitting(enc, task["train"], block_size)
    val_pairs, val_too_long = encode_fitting(enc, task["val"][:cfg.eval_examples], block_size)
    if too_long or val_too_long:
        distributed.log(f"VFT: left out {too_long} of {len(task['train'])} training and {val_too_long} "
                        f"validation pairs longer than block_size {block_size}", flush=True)
    if not train_pairs or not val_pairs:
        raise UserError(f"no {'training' if not train_pairs else 'validation'} pair fits in block_size {block_size}")
    distributed.log(f"VFT: {num_params(model):,} parameters, {len(train_pairs):,} training pairs, device {device}, "
                    f"dtype {cfg.dtype}, {distributed.world_size()} process(es) x {cfg.grad_accum} micro-batch(es), "
                    f"steps {state['step']}..{cfg.max_steps}")
    model, trainee = prepare_model(model, cfg, device)
    optimizer = make_optimizer(model, cfg, device)
    if cfg.resume:
        distributed.load_optimizer_state(model, optimizer, read_optimizer_state(optimizer, cfg.out_dir))
        restore_rng(state["rng"])
    history = state["history"]

    def save(step, full=None):
        """Checkpoint from rank 0; returns the full (weights, optimizer state) so a later save can reuse them."""
        nonlocal tokenizer_sources
        full = full or distributed.full_state(model, optimizer)
        if distributed.is_main():
            directory = save_checkpoint(cfg.out_dir, distributed.unwrap(model), optimizer,
                                        {"kind": "sft", "step": step, "config": config_to_dict(cfg),
                                         "history": history},
                                        tokenizer_files=tokenizer_sources, weights=full[0], optimizer_state=full[1])
            tokenizer_sources = tokenizer_files(directory)  # the copies from now on: a resumed checkpoint.old is deleted
        return full

    model.train()
    start_step, last = state["step"], min(cfg.stop_after or cfg.max_steps, cfg.max_steps)
    t0, tokens_seen, full = time.time(), 0, None
    for step in range(start_step, last):
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [train_pairs[i] for i in batch_indices(step, cfg.batch_size, len(train_pairs), cfg.seed)]
        micro = distributed.micro_batches(batch, cfg.grad_accum)
        step_loss = torch.zeros((), device=device)
        for m, pairs in enumerate(micro):
            with distributed.gradient_sync(model, m == len(micro) - 1):
                with autocast(device, cfg.dtype):
                    loss, n_tokens = pair_loss(trainee, pairs, enc.eot_token, device)
                # a mean over pairs: each micro-batch holds len(pairs) of the batch_size pairs
                (loss * distributed.scale(len(pairs), cfg.batch_size)).backward()
            step_loss += loss.detach() * len(pairs) / cfg.batch_size
            tokens_seen += n_tokens
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if done % cfg.log_every == 0 or done == last:
            step_loss_all, tokens_all = distributed.sum_across(torch.stack([step_loss.float().cpu(),
                                                                              torch.tensor(float(tokens_seen))]))
            elapsed = time.time() - t0
            eta = elapsed / (done - start_step) * (last - done)
            history["train"].append({"step": done, "loss": step_loss_all.item(), "lr": lr})
            distributed.log(f"step {done:5d}/{cfg.max_steps} | loss {step_loss_all.item():.4f} | lr {lr:.2e} | "
                            f"{tokens_all.item() / elapsed:,.0f} tok/s | elapsed {format_seconds(elapsed)} | "
                            f"eta {format_seconds(eta)}", flush=True)
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps:
            with autocast(device, cfg.dtype):  # every rank the same pairs: under FSDP all must run the forwards
                val = eval_loss(distributed.unwrap(model), val_pairs, enc.eot_token, device, cfg.batch_size)
            history["eval"].append({"step": done, "val_loss": val})
            distributed.log(f"step {done:5d} | val loss {val:.4f}", flush=True)
        if done % cfg.save_every == 0 or done == last:
            full = save(done)

    if last == cfg.max_steps and cfg.test_questions > 0:
        full = full or distributed.full_state(model, optimizer)  # a collective: before rank 0 goes on alone
    if last == cfg.max_steps and cfg.test_questions > 0 and distributed.is_main():
        plain = distributed.whole_model(model, cfg.out_dir, device).eval()  # rank 0 alone from here
        test = task["test"][:cfg.test_questions]
        with autocast(device, cfg.dtype):
            metrics = greedy_accuracy(plain, enc, test, max_new_tokens=cfg.max_new_tokens)
        history["test"] = {k: v for k, v in metrics.items() if k != "outputs"}
        distributed.log(f"test: greedy accuracy {metrics['accuracy']:.3f} on {len(test)} questions, "
                        f"degeneration {metrics['degeneration']:.3f}", flush=True)
        save(last, full)
    distributed.barrier()  # the ranks leave together: none tears the process group down under another's feet
    return history


if __name__ == "__main__":
    main(train, Config)
    distributed.finish()  # under torchrun: leave together, skipping a teardown that can abort
