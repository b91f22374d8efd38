"""
Training on several processes with torch.distributed, launched by torchrun: data-parallel (DDP) or fully
sharded (FSDP2), with gradient accumulation.

    torchrun --standalone --nproc_per_node=8 train_sft.py --batch_size=64 --grad_accum=2
    torchrun --standalone --nproc_per_node=8 train_align.py --parallel=fsdp --checkpoint_activations=True
    torchrun --standalone --nproc_per_node=8 candidates.py --ckpt=out/vft     # the questions split across ranks

Launched without torchrun, every function here is a no-op and a script runs as the one process it always was.
One process per GPU (NCCL), or per share of the CPU (gloo: how the tests run it).

Batches. `--batch_size` stays the global batch of one optimiser step: it is cut into world_size x grad_accum
equal micro-batches. Rank r takes every world_size-th example starting at r and runs its share as grad_accum
forward/backward passes; gradients add up locally and are exchanged on the last pass only. The trainers scale
each micro-batch's loss so that the summed gradients are exactly those of the loss over the whole global batch
(every loss here is a mean over some items of the batch: `scale` below), so a 2-process run takes the same steps
as a 1-process run, up to float rounding (tests/test_distributed.py).

Holding the model (--parallel):
  ddp   DistributedDataParallel: each rank holds the whole model and AdamW state; gradients are averaged by an
        all-reduce that overlaps the backward pass.
  fsdp  FSDP2 (`fully_shard`), one unit per transformer block plus the rest: parameters, gradients and AdamW
        state are split across ranks, and a block's parameters are gathered only while it computes; for models
        that do not fit one GPU. --checkpoint_activations=True (model.py) also recomputes each block's
        activations in the backward pass instead of keeping them.

Only rank 0 prints and writes files. A checkpoint always holds the full model and optimizer in the
single-process format (checkpoint.py), gathered from the shards when they are sharded (`full_state`), so a run
resumes on any number of processes. Processes exchange Python values as JSON, never as pickles.
"""

import atexit
import json
import os
import sys
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import find_checkpoint
from configurator import UserError
from model import load_model
from sequences import pick_device

PARALLEL = ("ddp", "fsdp")
# Rank 0 evaluates alone at the end of a stage while the others may already wait in the next stage's first
# collective (train_align.py building its prerequisites): allow that wait much longer than the 10-minute default.
TIMEOUT = timedelta(hours=2)


def launched():
    """Whether this process was started by torchrun (which sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def log(*args, **kwargs):
    """print, on rank 0 only: one progress line per step however many processes run."""
    if is_main():
        print(*args, **kwargs)


def init(device_name):
    """The device this process computes on. Under torchrun, also joins the process group (once; later calls
    return the same device) and takes the GPU of its local rank."""
    device = pick_device(device_name)
    if not launched():
        return device
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started local rank {local_rank} but this machine has "
                            f"{torch.cuda.device_count()} GPU(s): --nproc_per_node must not exceed that")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
        atexit.register(dist.destroy_process_group)
    return device


def finish():
    """The last call of a script run by torchrun, once its work is done and saved: all ranks meet, leave the process
    group, and the process exits at once with status 0, skipping the interpreter's teardown. Left to that
    teardown, gloo's and FSDP's C++ objects were destroyed after Python's, and about one finished run in 20 on a
    loaded 2-core machine aborted ('terminate called without an active exception'), which torchrun reports as a
    failed run. Does nothing outside torchrun, so a notebook or a test that calls train() is never exited."""
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check(cfg):
    """Refuse, before any work, a trainer config whose --parallel is unknown or whose global batch does not split
    into world_size x grad_accum equal micro-batches."""
    if cfg.parallel not in PARALLEL:
        raise UserError(f"--parallel={cfg.parallel}: choose one of {', '.join(PARALLEL)}")
    if cfg.grad_accum < 1 or cfg.batch_size % (world_size() * cfg.grad_accum):
        raise UserError(f"--batch_size={cfg.batch_size} must be a multiple of {world_size()} processes x "
                        f"--grad_accum={cfg.grad_accum}")


def micro_batches(batch, grad_accum):
    """This rank's share of one step's global batch, as grad_accum equal micro-batches."""
    local = batch[rank()::world_size()]
    size = len(local) // grad_accum
    return [local[i * size:(i + 1) * size] for i in range(grad_accum)]


def scale(micro_size, global_size):
    """Factor of a loss that is a mean over `micro_size` items of a micro-batch, so that the gradients summed over
    micro-batches and averaged over ranks (as DDP and FSDP do) are those of the mean over all `global_size` items:
    weight micro_size / global_size, times world_size to undo the average. 0 when the global batch has none."""
    return world_size() * micro_size / global_size if global_size else 0.0


def wrap(model, parallel, device):
    """The model as this run trains it: unchanged in one process, else under DDP or FSDP2."""
    if not dist.is_initialized():
        return model
    if parallel == "ddp":
        return DDP(model, device_ids=[device] if device.startswith("cuda") else None)
    mesh = init_device_mesh(torch.device(device).type, (world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest: embeddings (tied to the head), final norm
    return model


def unwrap(model):
    """The GPT inside a DDP wrapper (FSDP2 shards the module in place: it stays the GPT)."""
    return model.module if isinstance(model, DDP) else model


def whole_model(model, run_dir, device):
    """The trained model whole in this process, for rank 0's final evaluation: the GPT itself, or under FSDP the
    full model read back from the checkpoint just saved in run_dir (its shards live in the other processes)."""
    return load_model(find_checkpoint(run_dir), device) if is_sharded(model) else unwrap(model)


def is_sharded(model):
    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync(model, sync):
    """Around one micro-batch's backward: gradients are exchanged across ranks only when `sync` (the last one)."""
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
        return
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    yield


def _comm_device():
    """Where collectives take their tensors: the GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_across(values):
    """Element-wise sum of a float tensor over ranks (a copy, on the tensor's device; every rank gets it)."""
    if not dist.is_initialized():
        return values.detach().clone()
    summed = values.detach().to(_comm_device(), copy=True)
    dist.all_reduce(summed)
    return summed.to(values.device)


def gather_rows(rows):
    """Every rank's (n, ...) tensor stacked in rank order along dim 0 (equal shapes on every rank)."""
    if not dist.is_initialized():
        return rows
    parts = [torch.empty_like(rows) for _ in range(world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


def gather_json(value):
    """Every rank's JSON-safe `value`, as a list indexed by rank (the same list on every rank)."""
    if not dist.is_initialized():
        return [value]
    device = _comm_device()
    data = torch.tensor(bytearray(json.dumps(value).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], device=device))
    longest = max(int(size) for size in sizes)
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world_size())]
    dist.all_gather(parts, torch.cat([data, data.new_zeros(longest - len(data))]))
    return [json.loads(bytes(part[:int(size)].tolist()).decode()) for part, size in zip(parts, sizes)]


def barrier():
    if dist.is_initialized():
        dist.barrier()


def full_state(model, optimizer):
    """(weights, optimizer state_dict) in the single-process format, as checkpoint.save_checkpoint writes them.
    Under FSDP they are gathered from the shards into rank 0's CPU memory (the other ranks get empty dicts):
    a collective, so every rank must call it."""
    if not is_sharded(model):
        return unwrap(model).state_dict(), optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return weights, by_name
    # torch names the parameters by their module paths; the single-process format numbers them in the optimizer's order
    names = [name for group in by_name["param_groups"] for name in group["params"]]
    number = {name: i for i, name in enumerate(names)}
    groups, first = [], 0
    for group in by_name["param_groups"]:
        groups.append({**group, "params": list(range(first, first + len(group["params"])))})
        first += len(group["params"])
    return weights, {"state": {number[name]: s for name, s in by_name["state"].items()}, "param_groups": groups}


def load_optimizer_state(model, optimizer, state_dict):
    """Load a single-process optimizer state_dict (checkpoint.read_optimizer_state) into this run's optimizer,
    sharding it like the parameters under FSDP."""
    if not is_sharded(model):
        optimizer.load_state_dict(state_dict)
        return
    name_of = {param: name for name, param in model.named_parameters()}
    names = [name_of[param] for group in optimizer.param_groups for param in group["params"]]
    by_name = {"state": {names[i]: s for i, s in state_dict["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in state_dict["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
