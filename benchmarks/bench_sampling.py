"""
Sampling throughput with and without the KV cache, side by side in one process on the same machine.

    python benchmarks/bench_sampling.py                    # 8 samples x 200 new tokens, default small model

The model is the default small LLaMA-style model of train_sft.py (weights random: the speed of a forward
does not depend on them), and no end-of-text stops a row early, so both runs produce exactly
num_samples * new_tokens tokens. Reports new tokens/s for each and their ratio (target: cache >= 5x).
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configurator import main  # noqa: E402
from model import GPT, ModelConfig  # noqa: E402
from sample import generate  # noqa: E402
from train_sft import Config as SFTConfig  # noqa: E402


@dataclass
class Config:
    num_samples: int = 8            # rows sampled together (one prompt fanned out)
    new_tokens: int = 200           # tokens generated per row
    prompt_tokens: int = 60         # prompt length (a typical question)
    repeats: int = 3                # timed runs of each; the best is reported
    threads: int = 0                # torch threads (0 = torch's default)


def tokens_per_second(model, prompt, cfg, use_cache):
    best = float("inf")
    for _ in range(cfg.repeats):
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        out = generate(model, [prompt], cfg.new_tokens, num_samples=cfg.num_samples, temperature=1.0,
                       generator=g, use_cache=use_cache)
        best = min(best, time.perf_counter() - t0)
        assert int(out.lengths.sum()) == cfg.num_samples * cfg.new_tokens
    return cfg.num_samples * cfg.new_tokens / best


def run(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sft = SFTConfig()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, n_layer=sft.n_layer, n_head=sft.n_head, n_embd=sft.n_embd,
                            block_size=sft.block_size)).eval()
    prompt = torch.randint(0, 512, (cfg.prompt_tokens,)).tolist()
    generate(model, [prompt], 8, num_samples=cfg.num_samples)  # warm-up
    cached = tokens_per_second(model, prompt, cfg, use_cache=True)
    uncached = tokens_per_second(model, prompt, cfg, use_cache=False)
    print(f"{cfg.num_samples} samples x {cfg.new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"with KV cache:    {cached:10,.0f} new tokens/s")
    print(f"without KV cache: {uncached:10,.0f} new tokens/s")
    print(f"speed-up: {cached / uncached:.1f}x")
    return {"cached": cached, "uncached": uncached, "ratio": cached / uncached}


if __name__ == "__main__":
    main(run, Config)
