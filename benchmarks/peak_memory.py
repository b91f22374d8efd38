"""
Peak memory of a train_align.py run, measured in this process.

    python benchmarks/peak_memory.py                       # the default run: python train_align.py
    python benchmarks/peak_memory.py --args="--max_steps=10 --test_questions=0"   # a quick one
    python benchmarks/peak_memory.py --args="--device=cuda"

`--args` holds train_align.py's own flags; the run is train_align.train(Config parsed from them), exactly what
`python train_align.py <args>` does (so the default run builds out/vft and its candidates first when they are
missing, and that is measured too). Reports the process's peak resident set size (the lifetime high-water mark
of this process, which does nothing else, so run this script in a process of its own) and, on CUDA, the peak
memory allocated and reserved by PyTorch's caching allocator.
"""

import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_align  # noqa: E402
from compute import pick_device  # noqa: E402
from configurator import main, parse_args  # noqa: E402


@dataclass
class Config:
    args: str = ""                  # train_align.py flags, e.g. "--loss=dpo --max_steps=10" ("" = the default run)


def run(cfg):
    align_cfg = parse_args(train_align.Config, shlex.split(cfg.args))
    cuda = pick_device(align_cfg.device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    history = train_align.train(align_cfg)
    seconds = time.time() - t0
    command = " ".join(["python train_align.py", *shlex.split(cfg.args)])
    result = {"command": command, "history": history, "seconds": seconds,
              "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    print(f"{command}\n{seconds:.0f} s; peak resident memory (RSS): {result['max_rss_mib']:,.0f} MiB")
    if cuda:
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        print(f"peak CUDA memory: {result['cuda_max_allocated_mib']:,.0f} MiB allocated, "
              f"{result['cuda_max_reserved_mib']:,.0f} MiB reserved")
    return result


if __name__ == "__main__":
    main(run, Config)
