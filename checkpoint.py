"""
Saving and resuming training runs, and the ONE loader every stage opens a model with. Atomic on disk, and
without pickle anywhere (every file is safetensors or JSON, so loading a checkpoint cannot run code).

A run directory holds one checkpoint and a lock:

    run_dir/run.lock                     held (flock) by the process training in run_dir; holds its pid
    run_dir/checkpoint/
        config.json, model.safetensors   the model, as model.save_model writes it (loadable on its own)
        tokenizer.tiktoken,              the tokenizer the model was trained with, as tokenizer.save_tokenizer
          tokenizer_info.json            writes it, so the checkpoint is complete on its own
        optimizer.safetensors            every tensor of optimizer.state_dict()["state"], as "state.<param>.<name>"
        trainer.json                     the trainer's state (step, config, history, ...), the optimizer's
                                         param_groups, and the Python and numpy RNG states
        rng.safetensors                  the torch CPU RNG state and the CUDA ones when there are any

Saving writes a fresh `checkpoint.tmp/`, flushes it to disk, then renames `checkpoint` to `checkpoint.old`,
`checkpoint.tmp` to `checkpoint`, and deletes `checkpoint.old`. A kill at any moment therefore leaves a
complete `checkpoint` or, between the two renames, a complete `checkpoint.old`; `find_checkpoint` looks for
both. A write error (a full disk) removes the temporary files and leaves the previous checkpoint as it was.
Nothing non-finite is ever saved: a NaN weight is refused, so the last checkpoint is always a good one.

    lock_run_dir(run_dir)                # one run per directory, checked writable before any work
    save_checkpoint(run_dir, model, optimizer, {"step": step, "config": config_to_dict(cfg)}, enc=enc)
    model, state = load_checkpoint(run_dir)
    optimizer = ...built for `model` as before...
    restore_optimizer(optimizer, run_dir)
    restore_rng(state["rng"])

Loading a model anywhere else goes through `load_model_and_tokenizer(path)`: a run, checkpoint or nanoAFT model
directory, or a Hugging Face one, which is converted once into nanoAFT's format by hf.py (the one place this
file reaches the Hugging Face code, imported only when such a directory is met). Several processes (torchrun):
`full_state` gathers sharded weights and optimizer state into the single-process format that is saved, and
`load_optimizer_state` shards them again, so a run resumes on any number of processes.
"""

import fcntl
import hashlib
import importlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

import compute
from configurator import UserError, check_path
from model import load_config, save_model
from model import load_model as _load_model
from tokenizer import TOKENIZER_FILES, load_tokenizer, save_tokenizer

CHECKPOINT, OLD, TMP, LOCK = "checkpoint", "checkpoint.old", "checkpoint.tmp", "run.lock"
OPTIMIZER_FILE, TRAINER_FILE, RNG_FILE = "optimizer.safetensors", "trainer.json", "rng.safetensors"
TOKENIZER_FILE = TOKENIZER_FILES[0]  # the rank file of the tokenizer a checkpoint carries
RESERVED = ("param_groups", "rng")  # keys of trainer.json that save_checkpoint fills in itself
_LOCKS = {}  # run directory -> the open lock file this process holds (closed only when the process ends)


# -----------------------------------------------------------------------------
# random number generators

def seed_rng(seed):
    """Seed every RNG a trainer owns (torch, Python, numpy), so that a run repeats, and a resumed run repeats any
    later random draw too (the states go into every checkpoint)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


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
# one run per directory

def lock_run_dir(run_dir):
    """Claim run_dir for this process before any work: create it, check that a file can be created and removed in
    it, and hold an exclusive lock on run_dir/run.lock. The lock dies with the process (flock), so a crash never
    leaves a stale one; a second run on the same directory is refused at once, naming the holder's pid.
    Calling it again from the process that holds the lock is fine; `unlock_run_dir` releases it (a trainer calls it
    when it returns, so a notebook that trained in run_dir does not keep other processes out of it)."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _LOCKS:
        return
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
        handle = open(run_dir / LOCK, "a+")
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write in this directory ({e.strerror or e})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"{run_dir} is in use by another run (pid {holder}); wait for it to end or choose "
                        f"another --out_dir") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _LOCKS[key] = handle


def unlock_run_dir(run_dir):
    """Release the lock lock_run_dir took on run_dir (nothing happens when this process holds none)."""
    handle = _LOCKS.pop(str(Path(run_dir).resolve()), None)
    if handle is not None:
        handle.close()


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


def _first_non_finite(tensors):
    return next((name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def save_checkpoint(run_dir, model, optimizer, state, enc=None, weights=None, optimizer_state=None):
    """Write model, optimizer, RNG states, the tokenizer `enc` (when given) and the trainer's JSON-safe `state`
    dict to run_dir/checkpoint, replacing the previous checkpoint atomically. Returns the checkpoint directory.

    weights, optimizer_state: the full state dicts to write instead of the live ones, when those are sharded
    across processes (`full_state` gathers them; `model` then only supplies its config).
    A weight or optimizer tensor holding NaN or inf is refused (UserError), and so is a write error: in both
    cases the previous checkpoint stays exactly as it was."""
    run_dir = Path(run_dir)
    clash = [key for key in RESERVED if key in state]
    if clash:
        raise ValueError(f"state keys {clash} are reserved: save_checkpoint fills them in itself")
    weights = model.state_dict() if weights is None else weights
    optimizer_tensors, param_groups = _optimizer_tensors(
        optimizer.state_dict() if optimizer_state is None else optimizer_state)
    bad = _first_non_finite(weights) or _first_non_finite(optimizer_tensors)
    if bad:
        raise UserError(f"refusing to save a checkpoint whose '{bad}' holds NaN or inf; the last checkpoint in "
                        f"{run_dir} is kept")
    rng = capture_rng()
    # Serialise before touching the disk, so a state that is not JSON-safe fails with nothing half-written.
    try:
        trainer_json = json.dumps({**state, "param_groups": param_groups,
                                   "rng": {"python": rng["python"], "numpy": rng["numpy"]}}, indent=1)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: the trainer state must be JSON-safe ({e})") from None
    rng_tensors = {"torch": rng["torch"], **{f"cuda.{i}": s for i, s in enumerate(rng["cuda"])}}

    tmp, final, old = run_dir / TMP, run_dir / CHECKPOINT, run_dir / OLD
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a kill in the middle of an earlier save: never a checkpoint we need
        tmp.mkdir()
        save_model(model, tmp, weights)
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
        save_file(rng_tensors, str(tmp / RNG_FILE))
        (tmp / TRAINER_FILE).write_text(trainer_json + "\n")
        if enc is not None:
            save_tokenizer(enc, tmp)
        for path in tmp.iterdir():
            _fsync(path)
        _fsync(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{run_dir}: could not write the checkpoint ({e.strerror or e}); the previous one is "
                        f"kept") from None

    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # a kill after the last save's second rename left it; `final` is complete
        os.rename(final, old)
        _fsync(run_dir)
    os.rename(tmp, final)
    _fsync(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


def full_state(model, optimizer):
    """(weights, optimizer state_dict) in the single-process format, as save_checkpoint writes them.
    Under FSDP they are gathered from the shards into rank 0's CPU memory (the other ranks get empty dicts):
    a collective, so every rank must call it."""
    if not compute.is_sharded(model):
        return compute.unwrap(model).state_dict(), optimizer.state_dict()
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


def save_run(run_dir, model, optimizer, state, enc, full=None):
    """save_checkpoint for a model that may be spread over processes: every rank calls it (gathering the shards
    is a collective), rank 0 writes. Returns the full (weights, optimizer state), which a later save of the same
    weights can pass back as `full` (then only rank 0 needs to call)."""
    full = full or full_state(model, optimizer)
    if compute.is_main():
        save_checkpoint(run_dir, compute.unwrap(model), optimizer, state, enc, weights=full[0], optimizer_state=full[1])
    return full


# -----------------------------------------------------------------------------
# loading

def load_model(directory, device="cpu"):
    """model.load_model, once config.json's sizes are plausible: a corrupt size (block_size 10**20) would otherwise
    fail as an overflow or allocation traceback while the model is built, before any tensor is compared."""
    config = load_config(directory)
    for name, value in vars(config).items():
        if type(value) is int and value > 2 ** 24:  # no real model has more positions, embeddings or layers
            raise UserError(f"{Path(directory) / 'config.json'}: {name}={value} is implausibly large (at most 2**24)")
    return _load_model(directory, device)


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
    path = check_path(path)
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
                        f"{[len(g['params']) for g in optimizer.param_groups]} (a checkpoint of another model?)")
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


def _is_hugging_face(directory):
    """Whether `directory` holds a Hugging Face model: a config.json without nanoAFT's "nanoaft" key."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    try:
        return "nanoaft" not in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config}: invalid JSON ({e})") from None


def _conversion_cache(source):
    """Where a Hugging Face directory is converted when the caller names no place: a directory of nanoAFT's own
    cache ($NANOAFT_CACHE, else ~/.cache/nanoaft), never inside the user's model directory."""
    root = Path(os.environ.get("NANOAFT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "nanoaft")
    return root / "converted" / f"{source.name}-{hashlib.sha256(str(source).encode()).hexdigest()[:12]}"


def _source_key(source):
    """What a conversion depends on: the source directory and the names, sizes and times of its files."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in source.iterdir() if p.is_file())
    return {"source": str(source), "files": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}


def model_directory(path, convert_to=None):
    """The nanoAFT model directory `path` designates (a run, checkpoint or model directory: find_checkpoint). A
    Hugging Face directory is converted first, once, by hf.convert into `convert_to` (default: a cache directory,
    _conversion_cache), which is reused while the source's files are unchanged."""
    path = check_path(path)
    if not _is_hugging_face(path):
        return find_checkpoint(path)
    source = path.resolve()
    dest = Path(convert_to) if convert_to else _conversion_cache(source)
    stamp, key = dest / "converted_from.json", _source_key(source)
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        importlib.import_module("hf").convert(source, tmp)  # the door to the Hugging Face code
        (tmp / stamp.name).write_text(json.dumps(key) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{dest}: could not write the converted model ({e.strerror or e})") from None
    return dest


def load_tokenizer_of(path):
    """The tokenizer saved with the model that `path` designates (see model_directory)."""
    directory = model_directory(path)
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{directory}: no tokenizer here (missing {', '.join(missing)})")
    return load_tokenizer(directory)


def load_model_and_tokenizer(path, device="cpu", convert_to=None):
    """(model on `device`, tokenizer) of a run, checkpoint or nanoAFT model directory, or of a Hugging Face
    directory converted first (model_directory). The one loader every stage uses."""
    directory = model_directory(path, convert_to)
    enc = load_tokenizer_of(directory)  # first: a directory without a tokenizer fails before gigabytes are read
    model = load_model(directory, device)
    if enc.n_vocab > model.config.vocab_size:
        raise UserError(f"{directory}: the tokenizer has {enc.n_vocab} tokens but the model only "
                        f"{model.config.vocab_size} embeddings")
    return model, enc


def files_fingerprint(paths):
    """Short sha256 of the files' bytes, one file after another."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def fingerprints(path):
    """{"model", "tokenizer"}: hashes of the weights and tokenizer files of the model `path` designates, so that
    what was computed with one model (candidate files) is refused for another."""
    directory = model_directory(path)
    load_tokenizer_of(directory)  # names missing tokenizer files
    return {"model": files_fingerprint([directory / "model.safetensors"]),
            "tokenizer": files_fingerprint([directory / name for name in TOKENIZER_FILES])}


def whole_model(model, run_dir, device):
    """The trained model whole in this process, for rank 0's evaluation at the end: the GPT itself, or under FSDP
    the full model read back from the checkpoint just saved in run_dir (its shards live in the other processes)."""
    return load_model(find_checkpoint(run_dir), device) if compute.is_sharded(model) else compute.unwrap(model)


def restore_training(model, optimizer, path, state):
    """On --resume: AdamW's state from the checkpoint at `path` (sharded under FSDP) and every RNG from `state`
    (load_checkpoint's), so the resumed run continues exactly as an uninterrupted one."""
    load_optimizer_state(model, optimizer, path)
    restore_rng(state["rng"])


def load_optimizer_state(model, optimizer, path):
    """Load the optimizer state saved at `path` (read_optimizer_state) into this run's optimizer, sharding it like
    the parameters under FSDP."""
    if not compute.is_sharded(model):
        return restore_optimizer(optimizer, path)
    state_dict = read_optimizer_state(optimizer, path)
    name_of = {param: name for name, param in model.named_parameters()}
    names = [name_of[param] for group in optimizer.param_groups for param in group["params"]]
    by_name = {"state": {names[i]: s for i, s in state_dict["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in state_dict["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def resume_or_start(run_dir, config, kind, must_match, device="cpu"):
    """What a training script starts from, checked before anything is written to run_dir.

    With config.resume: (model, state) of run_dir's checkpoint, which must have been written by the same kind
    of script ("sft", "align") with the same values of the `must_match` config fields. Without it: None, a
    fresh start, refused when run_dir already holds a checkpoint unless config.overwrite is set."""
    run_dir = check_path(run_dir, "out_dir")
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
            raise UserError(f"--resume: --{key}={getattr(config, key)} differs from the run's "
                            f"{state['config'].get(key)}")
    return model, state
