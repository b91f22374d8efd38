"""
Sampling throughput: our generate with and without the KV cache, and transformers' generate on the same model,
side by side in one process on the same machine.

    python benchmarks/bench_sampling.py                    # 8 samples x 200 new tokens, default small model
    python benchmarks/bench_sampling.py --device=cuda
    python benchmarks/bench_sampling.py --num_samples=256 --new_tokens=160 --uncached=False  # a candidate batch

The model is the default small LLaMA-style model of train_sft.py (weights random: the speed of a forward
does not depend on them). One prompt is fanned out num_samples ways and sampled at temperature 1 with no top-k
or top-p, and no end-of-text stops a row early, so every run produces exactly num_samples * new_tokens tokens.
The baseline is transformers' LlamaForCausalLM with the identical config and weights (bench_train.py's
transformers_twin, sdpa attention): generate(do_sample=True, num_return_sequences=num_samples,
min_new_tokens=max_new_tokens=new_tokens, use_cache=True). The contenders take turns, best of `repeats`.
Reports new tokens/s of each, cache / no cache (target >= 5x) and ours / transformers (target >= 2x on CPU).
Without transformers installed the comparison with it is skipped, with a note.
"""

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train import best_of, transformers_twin  # noqa: E402
from compute import pick_device  # noqa: E402
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
    uncached: bool = True           # also time our generate without the KV cache (slow at hundreds of rows)
    device: str = "auto"            # "auto", "cpu", "cuda"
    threads: int = 0                # torch threads (0 = torch's default)


def run(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    sft = SFTConfig()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, n_layer=sft.n_layer, n_head=sft.n_head, n_embd=sft.n_embd,
                            block_size=sft.block_size)).eval()
    prompt = torch.randint(0, 512, (cfg.prompt_tokens,)).tolist()

    def ours(use_cache):
        g = torch.Generator(device=device).manual_seed(0)
        out = generate(model, [prompt], cfg.new_tokens, num_samples=cfg.num_samples, temperature=1.0,
                       generator=g, use_cache=use_cache)
        return int(out.lengths.sum())

    contenders = {"with KV cache": lambda: ours(True)}
    if cfg.uncached:
        contenders["without KV cache"] = lambda: ours(False)
    if importlib.util.find_spec("transformers") is not None:
        twin = transformers_twin(model).to(device).eval()
        prompt_ids = torch.tensor([prompt], device=device)  # (1, Tp)

        def theirs():
            out = twin.generate(prompt_ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                num_return_sequences=cfg.num_samples, min_new_tokens=cfg.new_tokens,
                                max_new_tokens=cfg.new_tokens, use_cache=True, pad_token_id=0)  # (N, Tp + new)
            return out[:, cfg.prompt_tokens:].numel()

        contenders["transformers"] = theirs
    else:
        print("note: transformers is not installed, so its generate is not compared (pip install -r "
              "requirements-dev.txt)")
    model.to(device)

    best, new_tokens = best_of(contenders, cfg.repeats, device)  # new tokens each contender's last run made
    expected = cfg.num_samples * cfg.new_tokens
    wrong = {name: n for name, n in new_tokens.items() if n != expected}
    if wrong:
        raise AssertionError(f"expected {expected} new tokens from each contender, got {wrong}")

    rate = {name: expected / seconds for name, seconds in best.items()}
    print(f"{cfg.num_samples} samples x {cfg.new_tokens} new tokens, device {device}, "
          f"{torch.get_num_threads()} threads")
    for name, value in rate.items():
        print(f"{name + ':':18s}{value:10,.0f} new tokens/s")
    result = {"cached": rate["with KV cache"], "new_tokens": new_tokens}
    if cfg.uncached:
        result["uncached"] = rate["without KV cache"]
        result["ratio"] = rate["with KV cache"] / rate["without KV cache"]
        print(f"KV cache speed-up: {result['ratio']:.1f}x")
    if "transformers" in rate:
        result["transformers"] = rate["transformers"]
        result["ratio_transformers"] = rate["with KV cache"] / rate["transformers"]
        print(f"ours (cached) / transformers: {result['ratio_transformers']:.2f}x")
    return result


if __name__ == "__main__":
    main(run, Config)
