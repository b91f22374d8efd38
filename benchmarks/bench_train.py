"""
Training-step throughput of our GPT against transformers' LlamaForCausalLM, side by side in one process.

    python benchmarks/bench_train.py                       # default small model (train_sft.py's), CPU
    python benchmarks/bench_train.py --device=cuda --dtype=bfloat16 --n_layer=12 --n_head=12 --n_embd=768 \
        --vocab_size=50304 --batch_size=16 --seq_len=1024  # GPT-2-124M-sized LLaMA on a GPU

Both models have the identical config and weights: ours is written with hf.save_pretrained and read back by
transformers (attn_implementation="sdpa", the same fused attention kernel ours calls). Before timing, both
compute the loss of one batch in float32 on the CPU and must agree to 1e-5, which shows the race is fair.
A step is forward + backward + AdamW (train_sft.make_optimizer, fused on CUDA) on B x T random tokens; the loss is
the mean next-token cross-entropy over the T - 1 positions that have a next token, for both. The two models are
timed alternately, best of `repeats`, so machine noise hits both alike. Reports tokens/s (B * T per step
over the step's time) of each and ours/transformers (target: >= 1.2x on CPU). transformers is a dev dependency.
"""

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configurator import UserError, main  # noqa: E402
from hf import save_pretrained  # noqa: E402
from model import GPT, ModelConfig, num_params  # noqa: E402
from compute import DTYPES, autocast, pick_device  # noqa: E402
from train_sft import Config as SFTConfig  # noqa: E402
from train_sft import make_optimizer  # noqa: E402


@dataclass
class Config:
    n_layer: int = 4                # transformer blocks (defaults: train_sft.py's model)
    n_head: int = 4                 # attention heads
    n_embd: int = 128               # width
    vocab_size: int = 512           # vocabulary (data/tokenizer.tiktoken has 512 tokens)
    batch_size: int = 32            # sequences per step
    seq_len: int = 256              # tokens per sequence (a typical prompt + chain of thought)
    warmup: int = 2                 # untimed steps of each model first
    steps: int = 5                  # steps per timed run
    repeats: int = 3                # timed runs of each model, alternating; the best is reported
    device: str = "auto"            # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": DTYPES})  # bfloat16: autocast (compute.py)
    threads: int = 0                # torch threads (0 = torch's default)
    seed: int = 0                   # weights and tokens


def transformers_twin(model):
    """transformers' LlamaForCausalLM with our llama-family model's config and weights (float32, on the CPU,
    sdpa attention), read from the Hugging Face directory hf.save_pretrained writes."""
    try:
        import transformers
    except ImportError:
        raise UserError("transformers is not installed; it is the baseline here (pip install -r "
                        "requirements-dev.txt)") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        return transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                             attn_implementation="sdpa")


def next_tokens(idx):
    """Our targets for idx (B, T): the next token at each position, -100 (ignored) at the last one."""
    return torch.cat([idx[:, 1:], torch.full((idx.shape[0], 1), -100)], dim=1)  # (B, T)


def ours_loss(model, idx, targets):
    return model(idx, targets)[1]


def hf_loss(model, idx, targets):
    # transformers shifts labels itself: labels = idx scores the same T - 1 next tokens as `targets`
    return model(input_ids=idx, labels=idx, use_cache=False).loss


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(contenders, repeats, device):
    """Time each of `contenders` (name -> function of no arguments) `repeats` times, taking turns so machine noise
    hits all alike; returns ({name: best seconds}, {name: what its last call returned}). The best drops a slow
    first call (lazy initialisation)."""
    best, results = dict.fromkeys(contenders, float("inf")), {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            synchronize(device)
            t0 = time.perf_counter()
            results[name] = fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, results


def run(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ours = GPT(ModelConfig(vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                           block_size=cfg.seq_len))
    theirs = transformers_twin(ours)
    idx = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len))  # (B, T)
    targets = next_tokens(idx)

    # fairness: same parameter count and the same loss (float32 on the CPU, a few rows, before any update)
    n_ours, n_theirs = num_params(ours), sum(p.numel() for p in theirs.parameters())
    if n_ours != n_theirs:
        raise AssertionError(f"parameter counts differ: ours {n_ours:,}, transformers {n_theirs:,}")
    with torch.no_grad():
        few = idx[:2, :128]  # (2, <=128)
        check = {"ours": ours_loss(ours, few, next_tokens(few)).item(),
                 "transformers": hf_loss(theirs, few, next_tokens(few)).item()}
    if abs(check["ours"] - check["transformers"]) > 1e-5:
        raise AssertionError(f"the models disagree: loss {check['ours']:.7f} (ours) vs "
                             f"{check['transformers']:.7f} (transformers)")

    idx, targets = idx.to(device), targets.to(device)
    contenders = {}
    for name, model, loss_fn in (("ours", ours, ours_loss), ("transformers", theirs, hf_loss)):
        model.to(device).train()
        contenders[name] = (model, loss_fn, make_optimizer(model, SFTConfig(), device))

    def train_steps(name, n):
        model, loss_fn, optimizer = contenders[name]
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            with autocast(device, cfg.dtype):
                loss = loss_fn(model, idx, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        return time.perf_counter() - t0

    for name in contenders:
        train_steps(name, cfg.warmup)
    best = dict.fromkeys(contenders, float("inf"))
    for r in range(cfg.repeats):
        for name in (list(contenders) if r % 2 == 0 else reversed(contenders)):  # alternate who goes first
            best[name] = min(best[name], train_steps(name, cfg.steps) / cfg.steps)
    rate = {name: cfg.batch_size * cfg.seq_len / seconds for name, seconds in best.items()}
    ratio = rate["ours"] / rate["transformers"]

    print(f"{n_ours:,} parameters, batch {cfg.batch_size} x {cfg.seq_len}, device {device}, dtype {cfg.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"first loss (float32, CPU): ours {check['ours']:.7f}, transformers {check['transformers']:.7f}")
    print(f"ours:         {rate['ours']:10,.0f} tokens/s")
    print(f"transformers: {rate['transformers']:10,.0f} tokens/s")
    print(f"ours / transformers: {ratio:.2f}x")
    return {"ours": rate["ours"], "transformers": rate["transformers"], "ratio": ratio,
            "loss_ours": check["ours"], "loss_transformers": check["transformers"]}


if __name__ == "__main__":
    main(run, Config)
