"""
Where and how a script computes: the device, the precision, and the processes (torchrun, DDP, FSDP2).
A leaf: it imports only torch and the project's UserError, so any file may use it.

    device = compute.init(cfg.device)             # also joins the process group under torchrun
    with compute.autocast(device, cfg.dtype): ...   # every forward pass

Precision (`--dtype`): "float32", or "bfloat16" = autocast. Weights, gradients and AdamW's state stay float32;
matmuls and attention run in bf16; log-probs and losses are float32 (losses.sequence_logprobs upcasts the
logits). On CPU bf16 autocast computes the same thing; it lets the bf16 path be tested without a GPU.

Processes. Launched without torchrun, every process function here is a no-op and a script runs as the one
process it always was. Under torchrun (one process per GPU with NCCL, or per share of the CPU with gloo, as the
tests run it):

    torchrun --standalone --nproc_per_node=8 train_sft.py --batch_size=64 --grad_accum=2
    torchrun --standalone --nproc_per_node=8 train_align.py --parallel=fsdp --checkpoint_activations=True

`--batch_size` stays the global batch of one optimiser step: it is cut into world_size x grad_accum equal
micro-batches (`micro_batches`). Every loss is a sum of per-example terms divided by the GLOBAL batch size, and
gradients are SUMMED across processes (not averaged, as DDP and FSDP do by default), so micro-batches and
processes simply add up to the gradient of the whole batch: a 2-process run takes the steps of a 1-process run,
up to float rounding (tests/test_distributed.py).

  ddp   DistributedDataParallel: each rank holds the whole model and AdamW state.
  fsdp  FSDP2 (`fully_shard`), one unit per transformer block plus the rest: parameters, gradients and AdamW
        state are split across ranks; for models that do not fit one GPU.

Only rank 0 prints and writes files; checkpoint.py gathers sharded state into the single-process format, so a
run resumes on any number of processes. Processes exchange Python values as JSON, never as pickles.
"""

import atexit
import contextlib
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import UserError

DTYPES = ("float32", "bfloat16")
PARALLEL = ("ddp", "fsdp")
# Rank 0 evaluates alone at the end of a stage while the others may already wait in the next stage's first
# collective (train_align.py building its prerequisites): allow that wait much longer than the 10-minute default.
TIMEOUT = timedelta(hours=2)


# -----------------------------------------------------------------------------
# device and precision

def pick_device(name):
    """"auto" -> cuda when there is a GPU, else cpu. A device this machine lacks is a UserError, before any work.
    On CUDA, float32 matmuls may use TF32 (10 mantissa bits: plenty for training these models)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"--device={name}: not a device name (auto, cpu, cuda, cuda:1, mps, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={name}: no CUDA GPU is available here (use --device=cpu or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device={name}: MPS is not available here (use --device=cpu or auto)")
    if kind == "cuda":
        torch.set_float32_matmul_precision("high")  # the one TF32 switch compatible with both of torch's APIs
    return device


def autocast(device, dtype):
    """The context every forward pass runs in for --dtype: nothing for float32, bf16 autocast for bfloat16."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype={dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# -----------------------------------------------------------------------------
# processes

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
    """print, on rank 0 only (one progress line per step however many processes run), flushed at once so that a
    log file or torchrun's output shows progress as it happens."""
    if is_main():
        print(*args, **{"flush": True, **kwargs})


def progress(t0, done, left):
    """"elapsed m:ss | eta m:ss" after `done` units of work since time t0, with `left` still to do."""
    elapsed = time.time() - t0
    return f"elapsed {format_seconds(elapsed)} | eta {format_seconds(elapsed / done * left)}"


def format_seconds(seconds):
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


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
    """The last call of a script run by torchrun, once its work is done and saved: all ranks meet, leave the
    process group, and the process exits at once with status 0, skipping the interpreter's teardown. Left to that
    teardown, gloo's and FSDP's C++ objects could be destroyed after Python's and abort a finished run, which
    torchrun reports as a failure. Does nothing outside torchrun, so a notebook or a test is never exited."""
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def check(cfg):
    """Refuse, before any work, a trainer config whose global batch does not split into world_size x grad_accum
    equal micro-batches (configurator.validate has checked --parallel and --grad_accum >= 1 already). Works before
    init: torchrun states the world size."""
    processes = world_size() if dist.is_initialized() else int(os.environ["WORLD_SIZE"]) if launched() else 1
    if cfg.batch_size % (processes * cfg.grad_accum):
        raise UserError(f"--batch_size={cfg.batch_size} must be a multiple of {processes} processes x "
                        f"--grad_accum={cfg.grad_accum}")


# -----------------------------------------------------------------------------
# the model across processes

def _sum_gradients(_, bucket):
    """DDP communication hook: all-reduce a bucket of gradients as a sum (the default divides by world_size)."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def prepare(model, cfg, device):
    """(model, trainee) as a trainer trains them: with activation checkpointing as cfg.checkpoint_activations asks,
    under DDP or FSDP2 (cfg.parallel) when launched by torchrun; the trainee is what the training forwards go
    through, the model or its torch.compile'd version (cfg.compile). Generation is never compiled: its
    ever-changing shapes would recompile at every step."""
    model.checkpoint_activations = cfg.checkpoint_activations
    model = wrap(model, cfg.parallel, device)
    return model, (torch.compile(model) if cfg.compile else model)


def wrap(model, parallel, device):
    """The model as this run trains it: unchanged in one process, else under DDP or FSDP2, with gradients summed
    across processes (every loss is already divided by the global batch size)."""
    if not dist.is_initialized():
        return model
    if parallel == "ddp":
        model = DDP(model, device_ids=[device] if device.startswith("cuda") else None)
        model.register_comm_hook(None, _sum_gradients)
        return model
    mesh = init_device_mesh(torch.device(device).type, (world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest: embeddings (tied to the head), final norm
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    return model


def unwrap(model):
    """The GPT inside a DDP wrapper (FSDP2 shards the module in place: it stays the GPT)."""
    return model.module if isinstance(model, DDP) else model


def is_sharded(model):
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model, sync):
    """Around one micro-batch's backward: gradients are exchanged across ranks only when `sync` (the last one)."""
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
        return
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    yield


def clip_grad_norm(model, max_norm):
    """Scale the gradients down to a global norm of at most max_norm; returns the norm they had, over the whole
    model (under FSDP each rank holds a shard of the gradients: the norm is computed across them)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def micro_batches(batch, grad_accum):
    """This rank's share of one step's global batch (every world_size-th example from its rank on), as
    grad_accum equal micro-batches."""
    local = batch[rank()::world_size()]
    size = len(local) // grad_accum
    return [local[i * size:(i + 1) * size] for i in range(grad_accum)]


# -----------------------------------------------------------------------------
# collectives (every rank must call them)

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
