"""
Saving and resuming training runs: atomic on disk, and without pickle anywhere (every file is safetensors or JSON,
so loading a checkpoint cannot run code).

A run directory holds one checkpoint:

    run_dir/checkpoint/
        config.json, model.safetensors   the model, as model.save_model writes it (loadable on its own)
        tokenizer.tiktoken               the tokenizer the model was trained with, when one is given: our rank
          or tokenizer.json, ...         file, or the Hugging Face tokenizer files of a model started from one
        optimizer.safetensors            every tensor of optimizer.state_dict()["state"], as "state.<param>.<name>"
        trainer.json                     the trainer's state (step, config, history, ...), the optimizer's
                                         param_groups, and the Python and numpy RNG states
        rng.safetensors                  the torch CPU RNG state and the CUDA ones when there are any

Saving writes a fresh `checkpoint.tmp/`, flushes it to disk, then renames `checkpoint` to `checkpoint.old`,
`checkpoint.tmp` to `checkpoint`, and deletes `checkpoint.old`. A crash at any moment therefore leaves a
complete `checkpoint` or, between the two renames, a complete `checkpoint.old`; `find_checkpoint` looks for
both. (One writer per run directory: a DDP run saves from rank 0 only.)

    save_checkpoint(run_dir, model, optimizer, {"step": step, "config": config_to_dict(cfg)}, tokenizer_files)
    model, state = load_checkpoint(run_dir)
    optimizer = ...built for `model` as before...
    restore_optimizer(optimizer, run_dir)
    restore_rng(state["rng"])
"""

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from configurator import UserError
from model import load_model, save_model

CHECKPOINT, OLD, TMP = "checkpoint", "checkpoint.old", "checkpoint.tmp"
OPTIMIZER_FILE, TRAINER_FILE, RNG_FILE, TOKENIZER_FILE = (
    "optimizer.safetensors", "trainer.json", "rng.safetensors", "tokenizer.tiktoken")
RESERVED = ("param_groups", "rng")  # keys of trainer.json that save_checkpoint fills in itself


# -----------------------------------------------------------------------------
# random number generators

def capture_rng():
    """The state of every RNG a training run draws from: Python's and numpy's as JSON, torch's as uint8 tensors."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng):
    """Put back the states `capture_rng` returned (or `load_checkpoint` read into state["rng"]).
    CUDA states are restored for the devices this machine has; resuming on CPU skips them."""
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        for device, state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


# -----------------------------------------------------------------------------
# saving

def _fsync(path):
    """Force a file, or a directory's entries (the renames in it), onto the disk."""
    if path.is_dir() and os.name != "posix":
        return  # only POSIX lets a directory be opened and flushed
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_tensors(state_dict):
    """(the flat {"state.<param>.<name>": tensor} dict, the param_groups) of an optimizer's state_dict."""
    tensors = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {param_id}.{name} is a {type(value).__name__}, not a tensor; "
                                f"checkpoint.py stores optimizer state as tensors only")
            tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
    return tensors, state_dict["param_groups"]


def _tokenizer_copies(tokenizer_files):
    """{name in the checkpoint: file to copy} for save_checkpoint's `tokenizer_files`."""
    if tokenizer_files is None:
        return {}
    if isinstance(tokenizer_files, (str, os.PathLike)):
        return {TOKENIZER_FILE: Path(tokenizer_files)}  # our rank file, whatever the user named it
    return {Path(path).name: Path(path) for path in tokenizer_files}


def save_checkpoint(run_dir, model, optimizer, state, tokenizer_files=None, weights=None, optimizer_state=None):
    """Write model, optimizer, RNG states and the trainer's JSON-safe `state` dict to run_dir/checkpoint,
    replacing the previous checkpoint atomically. Returns the checkpoint directory.

    weights, optimizer_state: the full state dicts to write instead of the live ones, when those are sharded
    across processes (distributed.full_state gathers them; `model` then only supplies its config).

    tokenizer_files: the tokenizer the model was trained with, copied in so that the checkpoint is complete on
    its own (hf.load_model_and_tokenizer reads it back): one rank file, stored as tokenizer.tiktoken whatever
    its name, or a list of files stored under their own names (hf.tokenizer_files gives that list for any
    model directory: a checkpoint's tokenizer.tiktoken or a Hugging Face model's tokenizer.json, ...)."""
    run_dir = Path(run_dir)
    clash = [key for key in RESERVED if key in state]
    if clash:
        raise ValueError(f"state keys {clash} are reserved: save_checkpoint fills them in itself")
    copies = _tokenizer_copies(tokenizer_files)
    for source in copies.values():
        if not source.is_file():
            raise UserError(f"{source}: tokenizer file not found")
    optimizer_tensors, param_groups = _optimizer_tensors(
        optimizer.state_dict() if optimizer_state is None else optimizer_state)
    rng = capture_rng()
    # Serialise before touching the disk, so a state that is not JSON-safe fails with nothing half-written.
    try:
        trainer_json = json.dumps({**state, "param_groups": param_groups,
                                   "rng": {"python": rng["python"], "numpy": rng["numpy"]}}, indent=1)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: the trainer state must be JSON-safe ({e})") from None
    rng_tensors = {"torch": rng["torch"], **{f"cuda.{i}": s for i, s in enumerate(rng["cuda"])}}

    tmp, final, old = run_dir / TMP, run_dir / CHECKPOINT, run_dir / OLD
    run_dir.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash in the middle of an earlier save: never a checkpoint we need
    tmp.mkdir()
    save_model(model, tmp, weights)
    save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
    save_file(rng_tensors, str(tmp / RNG_FILE))
    (tmp / TRAINER_FILE).write_text(trainer_json + "\n")
    for name, source in copies.items():  # before the swap below: the source may be the checkpoint it replaces
        shutil.copyfile(source, tmp / name)
    for path in tmp.iterdir():
        _fsync(path)
    _fsync(tmp)

    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # a crash after the last save's second rename left it; `final` is complete
        os.rename(final, old)
        _fsync(run_dir)
    os.rename(tmp, final)
    _fsync(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


# -----------------------------------------------------------------------------
# loading

def find_checkpoint(path):
    """The checkpoint directory `path` designates: `path` itself when it holds model.safetensors, else
    path/checkpoint, else path/checkpoint.old (the complete one a crash between the two renames leaves)."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT, path / OLD):
        if (candidate / "model.safetensors").is_file():
            return candidate
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or run directory")
    raise UserError(f"{path}: no checkpoint here (expected model.safetensors in it, "
                    f"in {path / CHECKPOINT} or in {path / OLD})")


def has_checkpoint(path):
    """Whether find_checkpoint(path) would find a model."""
    path = Path(path)
    return any((candidate / "model.safetensors").is_file() for candidate in (path, path / CHECKPOINT, path / OLD))


def _required(directory, name):
    path = directory / name
    if not path.is_file():
        raise UserError(f"{path}: not found (a training checkpoint needs it; was this saved by save_model only?)")
    return path


def _read_tensors(path):
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


def _read_trainer_json(directory):
    path = _required(directory, TRAINER_FILE)
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(state, dict) or any(key not in state for key in RESERVED):
        raise UserError(f"{path}: not a trainer state written by save_checkpoint (no {' / '.join(RESERVED)})")
    return path, state


def load_checkpoint(path, device="cpu"):
    """(model on `device`, trainer state) from a run or checkpoint directory. The state is the dict given to
    save_checkpoint plus "param_groups" and "rng" (complete, ready for restore_rng)."""
    directory = find_checkpoint(path)
    _, state = _read_trainer_json(directory)
    rng_path = _required(directory, RNG_FILE)
    rng_tensors = _read_tensors(rng_path)
    if "torch" not in rng_tensors:
        raise UserError(f"{rng_path}: missing tensor 'torch'")
    state["rng"]["torch"] = rng_tensors["torch"]
    state["rng"]["cuda"] = [rng_tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in rng_tensors))]
    return load_model(directory, device), state


def restore_optimizer(optimizer, path):
    """Load the optimizer state saved at `path` into `optimizer`, which must be built over the same parameters in
    the same groups and order (tensors move to the parameters' devices)."""
    optimizer.load_state_dict(read_optimizer_state(optimizer, path))


def read_optimizer_state(optimizer, path):
    """The optimizer state_dict saved at `path`, checked against `optimizer`'s parameter groups and shapes."""
    directory = find_checkpoint(path)
    trainer_path, saved = _read_trainer_json(directory)
    tensors_path = _required(directory, OPTIMIZER_FILE)
    tensors = _read_tensors(tensors_path)
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise UserError(f"{trainer_path}: the saved optimizer has parameter groups of sizes "
                        f"{[len(g['params']) for g in groups]}, this one "
                        f"{[len(g['params']) for g in optimizer.param_groups]} (another model, or a run saved "
                        f"before q, k and v became one matrix: its model.safetensors still loads)")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for key, value in tensors.items():
        prefix, param_id, name = (key.split(".", 2) + ["", ""])[:3]
        if prefix != "state" or not param_id.isdigit() or not name or int(param_id) >= len(params):
            raise UserError(f"{tensors_path}: tensor '{key}' matches no parameter of this optimizer "
                            f"({len(params)} parameters)")
        shape = tuple(params[int(param_id)].shape)
        # The state of a parameter broadcasts to it (Adam's moments have its shape, a step counter is a scalar,
        # Adafactor's factored moments are a row and a column); anything else was saved for another model.
        try:
            fits = torch.broadcast_shapes(value.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise UserError(f"{tensors_path}: tensor '{key}' has shape {tuple(value.shape)}, which does not fit "
                            f"parameter {param_id} of shape {shape} (a checkpoint of a different model?)")
        state.setdefault(int(param_id), {})[name] = value
    for saved_group, group in zip(groups, optimizer.param_groups):
        for key, value in saved_group.items():  # JSON turned tuples such as Adam's betas into lists
            if isinstance(group.get(key), tuple) and isinstance(value, list):
                saved_group[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def resume_or_start(run_dir, config, kind, must_match, device="cpu"):
    """What a training script starts from, checked before anything is written to run_dir.

    With config.resume: (model, state) of run_dir's checkpoint, which must have been written by the same kind
    of script ("sft", "align") with the same values of the `must_match` config fields. Without it: None, a
    fresh start, refused when run_dir already holds a checkpoint unless config.overwrite is set."""
    run_dir = Path(run_dir)
    # checkpoint/ or checkpoint.old/ only: unlike has_checkpoint(), a bare model in run_dir is not a run to resume
    saved = any((run_dir / name / "model.safetensors").is_file() for name in (CHECKPOINT, OLD))
    if not config.resume:
        if saved and not config.overwrite:
            raise UserError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                            f"replace it, or choose another --out_dir")
        return None
    if not saved:
        raise UserError(f"--resume: no checkpoint to resume in {run_dir}")
    model, state = load_checkpoint(run_dir, device)
    if state.get("kind") != kind:
        raise UserError(f"--resume: {find_checkpoint(run_dir)} was not written by the {kind} trainer")
    for key in must_match:
        if state["config"].get(key) != getattr(config, key):
            raise UserError(f"--resume: --{key}={getattr(config, key)} differs from the run's {state['config'].get(key)}")
    return model, state
