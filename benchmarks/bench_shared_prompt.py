"""
Candidate sampling with the prompts' keys shared (model.shared_prompt_attention) against copied k times
(SDPA over each row's whole cache), side by side in one process on the same machine.

    python benchmarks/bench_shared_prompt.py                       # 32 questions x 8 samples, CPU
    python benchmarks/bench_shared_prompt.py --device=cuda --dtype=bfloat16

The batch is candidates.py's: `questions` prompts of different lengths (left-padded) fanned out `k` ways, at
temperature 1, with no end-of-text, so each run makes exactly questions * k * new_tokens tokens. The default
small model of train_sft.py, random weights. The same generator seed drives both runs: in float32 they must
draw the same tokens (the two attentions differ by float rounding only), which is checked; under bf16 autocast
rounding makes some rows diverge, and the share of equal tokens is reported. Best of `repeats`, alternating.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train import best_of  # noqa: E402
from configurator import main  # noqa: E402
from model import GPT, ModelConfig  # noqa: E402
from sample import generate  # noqa: E402
from sequences import DTYPES, autocast, pick_device  # noqa: E402
from train_sft import Config as SFTConfig  # noqa: E402


@dataclass
class Config:
    questions: int = 32             # prompts per batch (candidates.py: batch_size 256 // k)
    k: int = 8                      # samples per prompt
    new_tokens: int = 160           # tokens generated per row
    prompt_tokens: int = 60         # the longest prompt; the others are 55%-100% of it
    repeats: int = 3                # timed runs of each; the best is reported
    device: str = "auto"            # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": DTYPES})  # bfloat16: autocast (sequences.py)
    seed: int = 0


def run(cfg):
    device = pick_device(cfg.device)
    sft = SFTConfig()
    torch.manual_seed(cfg.seed)
    model = GPT(ModelConfig(vocab_size=512, n_layer=sft.n_layer, n_head=sft.n_head, n_embd=sft.n_embd,
                            block_size=sft.block_size)).to(device).eval()
    lengths = torch.linspace(0.55, 1.0, cfg.questions) * cfg.prompt_tokens
    prompts = [torch.randint(0, 512, (max(1, int(n)),)).tolist() for n in lengths]

    def sample(share):
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        with autocast(device, cfg.dtype):
            return generate(model, prompts, cfg.new_tokens, num_samples=cfg.k, temperature=1.0, generator=g,
                            share_prompt=share)

    best, tokens = best_of({"shared": lambda: sample(True).tokens, "copied": lambda: sample(False).tokens},
                           cfg.repeats, device)
    made = cfg.questions * cfg.k * cfg.new_tokens
    same = (tokens["shared"] == tokens["copied"]).float().mean().item()
    if cfg.dtype == "float32" and same != 1.0:
        raise AssertionError(f"in float32 both must draw the same tokens; {same:.4f} of them agree")
    rate = {name: made / seconds for name, seconds in best.items()}
    print(f"{cfg.questions} questions x {cfg.k} samples x {cfg.new_tokens} new tokens, device {device}, "
          f"{cfg.dtype}, {torch.get_num_threads()} threads")
    for name, value in rate.items():
        print(f"{name + ':':10s}{value:10,.0f} new tokens/s")
    print(f"shared / copied: {rate['shared'] / rate['copied']:.2f}x; same tokens: {same:.4f}")
    return {**rate, "ratio": rate["shared"] / rate["copied"], "same_tokens": same,
            "shape": tuple(tokens["shared"].shape)}


if __name__ == "__main__":
    main(run, Config)
