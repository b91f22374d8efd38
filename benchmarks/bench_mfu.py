"""
Model FLOPs utilisation (MFU) of one training step of a GPT-2-124M-sized model (our GPT, family "gpt2") in bf16.

    python benchmarks/bench_mfu.py                         # on a GPU: 12 layers x 768, batch 16 x 1024
    python benchmarks/bench_mfu.py --compile=True          # the same with torch.compile
    python benchmarks/bench_mfu.py --n_layer=2 --n_embd=64 --n_head=2 --vocab_size=512 --block_size=64 \
        --batch_size=2 --steps=2                           # a smoke run on a CPU (no MFU claimed)

A step is forward + backward + AdamW (train_sft.make_optimizer: fused on CUDA) on B x T random tokens under
bf16 autocast. FLOPs per token follow PaLM's appendix B: 6N + 12 L H Q T, where N counts the weights of every
matrix multiplication: all parameters except the position embedding (a lookup), the token embedding counted once
as the output head's matmul (tied, as in GPT-2; an untied model's lookup table is left out); the second term is
attention's QK^T and AV over T keys (the full square, as PaLM counts it, though a causal kernel skips half).
MFU = achieved FLOP/s / peak_flops: the default 989e12 is the dense bf16 peak of an H100/H200 SXM; set
--peak_flops for another card. Reports tokens/s, achieved TFLOP/s, MFU and the peak CUDA memory allocated.
"""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train import synchronize  # noqa: E402
from configurator import main  # noqa: E402
from model import GPT, ModelConfig, num_params  # noqa: E402
from compute import DTYPES, autocast, pick_device  # noqa: E402
from train_sft import Config as SFTConfig  # noqa: E402
from train_sft import make_optimizer  # noqa: E402


@dataclass
class Config:
    n_layer: int = 12               # GPT-2 small
    n_head: int = 12                # attention heads
    n_embd: int = 768               # width
    vocab_size: int = 50304         # GPT-2's 50257 rounded up to a multiple of 128
    block_size: int = 1024          # context, and the sequence length trained
    batch_size: int = 16            # sequences per step
    warmup: int = 3                 # untimed steps first (torch.compile compiles during the first)
    steps: int = 10                 # steps per timed run
    repeats: int = 2                # timed runs; the best is reported
    compile: bool = False           # torch.compile the model
    peak_flops: float = 989e12      # the card's dense bf16 peak FLOP/s (H100 / H200 SXM: 989e12)
    device: str = "auto"            # "auto", "cpu", "cuda"
    dtype: str = field(default="bfloat16", metadata={"choices": DTYPES})  # autocast dtype (sequences.py)


def matmul_params(model):
    """N of 6N: the parameters of every matrix multiplication (see the module docstring)."""
    n = num_params(model, non_embedding=True)  # without the token and position embeddings
    return n + model.lm_head.weight.numel() if model.config.tie_embeddings else n


def flops_per_token(model, seq_len):
    """Training FLOPs (forward + backward) per token, PaLM appendix B: 6N + 12 L H Q T."""
    c = model.config
    return 6 * matmul_params(model) + 12 * c.n_layer * c.n_head * c.head_dim * seq_len


def run(cfg):
    device = pick_device(cfg.device)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: faster than on the CPU and a copy
        model = GPT(ModelConfig(family="gpt2", vocab_size=cfg.vocab_size, block_size=cfg.block_size,
                                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, bias=True))
    optimizer = make_optimizer(model, SFTConfig(), device)
    step_model = torch.compile(model) if cfg.compile else model
    idx = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), device=device)  # (B, T + 1)
    x, y = idx[:, :-1], idx[:, 1:]  # (B, T) inputs and their next tokens
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def train_steps(n):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            with autocast(device, cfg.dtype):
                _, loss = step_model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        return time.perf_counter() - t0

    train_steps(cfg.warmup)
    seconds = min(train_steps(cfg.steps) / cfg.steps for _ in range(cfg.repeats))
    tokens_per_s = cfg.batch_size * cfg.block_size / seconds
    flops = flops_per_token(model, cfg.block_size) * tokens_per_s
    result = {"params": num_params(model), "matmul_params": matmul_params(model), "tokens_per_s": tokens_per_s,
              "tflops": flops / 1e12, "mfu": None, "peak_memory_gib": None}
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"{result['params']:,} parameters (N = {result['matmul_params']:,}), batch {cfg.batch_size} x "
          f"{cfg.block_size}, {cfg.dtype}, compile={cfg.compile}, device {device} ({name})")
    print(f"{tokens_per_s:,.0f} tokens/s, {seconds * 1000:.1f} ms/step, {result['tflops']:.1f} TFLOP/s achieved")
    if device.startswith("cuda"):
        result["mfu"] = flops / cfg.peak_flops
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"MFU {100 * result['mfu']:.1f}% of {cfg.peak_flops / 1e12:.0f} TFLOP/s peak; "
              f"peak CUDA memory allocated {result['peak_memory_gib']:.2f} GiB")
    else:
        print("MFU is a GPU figure: not measured on CPU")
    return result


if __name__ == "__main__":
    main(run, Config)
