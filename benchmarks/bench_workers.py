"""
Is reproduce.py faster with --workers=2 on a 2-core CPU? The same work two ways, side by side on one machine:
one process with every CPU thread doing two jobs one after the other (--workers=1), against two processes with
half the threads each doing one job at the same time (--workers=2).

    python benchmarks/bench_workers.py              # reproduce.py's VFT model (2 layers), CPU
    python benchmarks/bench_workers.py --steps=100 --repeats=3

A job is either `steps` training steps of reproduce.py's VFT model (forward, backward, AdamW on batch_size x seq_len
random tokens) or greedy decoding of `prompts` random prompts of different lengths for `new_tokens` tokens each (no
end-of-text, so every row decodes every token: a fixed amount of work), in batches of 128 rows as evaluate.py
does. Each way is timed `repeats` times, alternating, and the best is kept. Reports the wall time of each way and
their ratio (one process / two processes: above 1 means the workers are faster).
"""

import multiprocessing
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
from train_sft import make_optimizer  # noqa: E402


@dataclass
class Config:
    n_layer: int = 2                # reproduce.py's VFT model: 2 blocks
    n_embd: int = 128               # width
    vocab_size: int = 512           # data/tokenizer.tiktoken's tokens
    batch_size: int = 32            # sequences per training step (train_sft.py's)
    seq_len: int = 150              # tokens per training sequence (a typical prompt + chain of this task)
    steps: int = 40                 # training steps per job
    prompts: int = 1024             # prompts per decoding job
    prompt_len: int = 40            # tokens of the longest prompt; the others are 0-20 shorter (left-padded, as
    # questions of different lengths are in evaluate.py)
    new_tokens: int = 64            # tokens decoded per prompt
    repeats: int = 2                # timed runs of each way, alternating; the best is reported


def job(kind, cfg, threads):
    """One job with `threads` torch threads; returns (its seconds, the tokens it trained on or decoded)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_embd=cfg.n_embd, block_size=256))
    t0, tokens = time.time(), 0
    if kind == "train":
        optimizer = make_optimizer(model, SFTConfig(), "cpu")
        for _ in range(cfg.steps):
            idx = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.seq_len))
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += idx[:, 1:].numel()
    else:
        model.eval()
        lengths = cfg.prompt_len - torch.randint(min(21, cfg.prompt_len), (cfg.prompts,))
        prompts = [torch.randint(cfg.vocab_size, (int(n),)).tolist() for n in lengths]
        for start in range(0, cfg.prompts, 128):
            tokens += int(generate(model, prompts[start:start + 128], cfg.new_tokens, temperature=0.0).lengths.sum())
    return time.time() - t0, tokens


def one_process(kind, cfg, threads):
    """Two jobs one after the other in this process, every thread: (seconds, tokens)."""
    t0 = time.time()
    tokens = job(kind, cfg, threads)[1] + job(kind, cfg, threads)[1]
    return time.time() - t0, tokens


def two_processes(kind, cfg, threads, pool):
    """Two jobs at the same time in two processes, half the threads each (the pool is started beforehand, so its
    start-up is not timed; reproduce.py pays it once per run)."""
    t0 = time.time()
    tokens = sum(n for _, n in pool.starmap(job, [(kind, cfg, max(1, threads // 2))] * 2))
    return time.time() - t0, tokens


def run(cfg):
    threads = torch.get_num_threads()
    print(f"{threads} torch threads; one process: 2 jobs one after the other with {threads}; two processes: one job "
          f"each with {max(1, threads // 2)}")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(job, [("decode", Config(prompts=8, new_tokens=2), 1)] * 2)  # imports done in both workers
        results = {}
        for kind in ("train", "decode"):
            one, two = [], []
            for _ in range(cfg.repeats):
                one.append(one_process(kind, cfg, threads))
                two.append(two_processes(kind, cfg, threads, pool))
            (t_one, tokens), (t_two, tokens_two) = min(one), min(two)
            results[kind] = {"one": t_one, "two": t_two, "ratio": t_one / t_two, "tokens": (tokens, tokens_two)}
            print(f"{kind:6s}: {tokens:,} tokens; one process {t_one:6.1f} s, two processes {t_two:6.1f} s: "
                  f"**{t_one / t_two:.2f}x** with two", flush=True)
    return results


if __name__ == "__main__":
    main(run, Config)
