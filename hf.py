"""
Hugging Face model directories in and out, for GPT-2 and the LLaMA family (Llama, Qwen2, SmolLM). The machine room
border: the teaching core never imports this file; checkpoint.load_model_and_tokenizer reaches `convert` lazily
when it meets a Hugging Face directory.

    convert("path/to/SmolLM2-135M", "out/smollm2")   # once: a nanoAFT model directory (config.json {"nanoaft": ...},
                                                      # model.safetensors, tokenizer.tiktoken + tokenizer_info.json)
    model = from_pretrained("path/to/SmolLM2-135M")  # the model alone, without writing anything
    save_pretrained(model, "out/aft-hf", enc=enc)     # back: opens in transformers unchanged, tokenizer.json included

A Hugging Face directory is config.json + model.safetensors (or shards listed in model.safetensors.index.json) +
a tokenizer in one of the layouts hf_tokenizer.py lists (tokenizer.json; vocab.json + merges.txt; GPT-2's
gpt2.tiktoken; ...).

How the names and layouts differ from ours (model.py):
- LLaMA family: model.embed_tokens / model.layers.{i}.{input_layernorm, self_attn.*, post_attention_layernorm,
  mlp.*} / model.norm / lm_head. The rotary layout is already ours (half split), so no weight is permuted.
  Their separate self_attn.q_proj, k_proj and v_proj are stacked into our one attn.qkv_proj, and split again
  on the way out. Qwen2 is LLaMA with q/k/v biases; SmolLM is LLaMA with grouped-query attention and a tied head.
- GPT-2: transformer.{wte, wpe, h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_f}.
  Its linear layers are "Conv1D" modules that store weights as (in, out), the transpose of nn.Linear, and
  q, k and v are one fused c_attn matrix, as in ours. Older files lack the "transformer." prefix and carry the
  causal-mask buffers attn.bias / attn.masked_bias, which are not weights.
- A tied head is absent from the file, and is not written.

Options our model does not implement (rope scaling, sliding windows, other activations, ...) are refused with a
message naming them, instead of loading a model that silently computes something else.

Export a trained model:  python hf.py --ckpt=out/aft --out=out/aft-hf [--source=path/to/the/original]
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from configurator import UserError, bounded, check_output, main, validate
from hf_tokenizer import copy_tokenizer_files, load_hf_tokenizer, tokenizer_layout, write_tokenizer_json
from model import GPT, ModelConfig, load_state, save_model
from tokenizer import save_tokenizer

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# Our module names -> Hugging Face's: (outside the blocks, the prefix of block i, inside a block). A tuple: our
# matrix is theirs stacked along the rows (LLaMA's separate q, k and v make our attn.qkv_proj).
HF_NAMES = {
    "llama": (
        {"wte": "model.embed_tokens", "norm_f": "model.norm", "lm_head": "lm_head"},
        "model.layers.{i}",
        {"norm1": "input_layernorm", "norm2": "post_attention_layernorm",
         "attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "attn.o_proj": "self_attn.o_proj",
         "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj"},
    ),
    "gpt2": (
        {"wte": "transformer.wte", "wpe": "transformer.wpe", "norm_f": "transformer.ln_f", "lm_head": "lm_head"},
        "transformer.h.{i}",
        {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv_proj": "attn.c_attn",
         "attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"},
    ),
}
# Tensors in Hugging Face files that are not weights: GPT-2's causal-mask buffers, old LLaMA rotary tables.
NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def hf_names(name, family):
    """Our parameter name -> the Hugging Face tensors that hold it, in the order they are stacked."""
    top, block_prefix, inside = HF_NAMES[family]
    module, param = name.rsplit(".", 1)
    if module.startswith("blocks."):
        _, i, rest = module.split(".", 2)
        theirs = inside[rest] if isinstance(inside[rest], tuple) else (inside[rest],)
        return [f"{block_prefix.format(i=i)}.{part}.{param}" for part in theirs]
    return [f"{top[module]}.{param}"]


def row_sizes(name, config):
    """How many rows of our parameter `name` each of its Hugging Face tensors holds (hf_names' order)."""
    if ".attn.qkv_proj." in name and config.family == "llama":
        return [config.n_head * config.head_dim, config.n_kv_head * config.head_dim,
                config.n_kv_head * config.head_dim]
    return None  # one tensor


def _is_conv1d(name, tensor, family):
    """GPT-2's in-block matrices are stored (in, out)."""
    return family == "gpt2" and name.startswith("blocks.") and tensor.dim() == 2


# -----------------------------------------------------------------------------
# config.json <-> ModelConfig

def config_from_hf(hf: dict, source: str) -> ModelConfig:
    """Our ModelConfig for a Hugging Face config.json, or a UserError naming every option we cannot honour."""
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type not in ARCHITECTURES or any(a != ARCHITECTURES[model_type] for a in architectures):
        raise UserError(f"{source}: model_type={model_type!r}, architectures={architectures} is not supported "
                        f"(supported: {', '.join(f'{t} ({a})' for t, a in ARCHITECTURES.items())})")

    def positive(key, value, kind=int):
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                or not 0 < value < float("inf"):
            raise UserError(f"{source}: {key}={value!r}, expected a positive {kind.__name__}")
        return value

    def get(key, default=None, kind=int):
        """hf[key] (or `default`): a positive number of its kind; a missing key without a default is an error."""
        value = hf.get(key, default)
        if value is None:
            raise UserError(f"{source}: missing {key!r}")
        return positive(key, value, kind)

    def flag(key, default):
        value = hf.get(key, default)
        if not isinstance(value, bool):
            raise UserError(f"{source}: {key}={value!r}, expected true or false")
        return value

    problems = []  # "option=value" of everything unsupported, reported together
    if hf.get("quantization_config"):
        problems.append(f"quantization_config={json.dumps(hf['quantization_config'])[:80]}")
    if model_type == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            problems.append(f"activation_function={hf['activation_function']!r}")  # ours is tanh-approximated GELU
        for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                               ("add_cross_attention", False)):
            if hf.get(key, supported) != supported:
                problems.append(f"{key}={hf[key]!r}")
        if problems:
            raise UserError(f"{source}: unsupported option(s) {', '.join(problems)}")
        n_embd = get("n_embd", 768)
        return ModelConfig(family="gpt2", vocab_size=get("vocab_size", 50257), block_size=get("n_positions", 1024),
                           n_layer=get("n_layer", 12), n_head=get("n_head", 12), n_embd=n_embd,
                           intermediate_size=get("n_inner", 4 * n_embd) if hf.get("n_inner") else 4 * n_embd,
                           norm_eps=get("layer_norm_epsilon", 1e-5, float), bias=True,
                           tie_embeddings=flag("tie_word_embeddings", True))

    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r}")
    rope = hf.get("rope_parameters")
    if rope is not None:  # transformers >= 5 writes {"rope_type": ..., "rope_theta": ...}
        if not isinstance(rope, dict):
            raise UserError(f"{source}: rope_parameters={rope!r}, expected an object")
        if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
            problems.append(f"rope_parameters={json.dumps(rope)}")
        rope_theta = positive("rope_parameters.rope_theta", rope.get("rope_theta", 10000.0), float)
    else:
        rope_theta = get("rope_theta", 10000.0, float)
    scaling = hf.get("rope_scaling")
    if scaling and not isinstance(scaling, dict):
        raise UserError(f"{source}: rope_scaling={scaling!r}, expected an object or null")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) != "default":
        problems.append(f"rope_scaling={json.dumps(scaling)}")
    if model_type == "qwen2":
        qkv_bias, bias = True, False  # Qwen2 always has q/k/v biases and no others
        if hf.get("use_sliding_window"):
            problems.append("use_sliding_window=true")
        sliding = [kind for kind in hf.get("layer_types") or [] if kind != "full_attention"]
        if sliding:
            problems.append(f"layer_types containing {sliding[0]!r}")
    else:  # our LLaMA has biases on all linear layers or on none
        attention_bias, mlp_bias = flag("attention_bias", False), flag("mlp_bias", False)
        if attention_bias != mlp_bias:
            problems.append(f"attention_bias={attention_bias} with mlp_bias={mlp_bias}")
        qkv_bias, bias = False, bool(attention_bias and mlp_bias)
    if problems:
        raise UserError(f"{source}: unsupported option(s) {', '.join(problems)}")
    return ModelConfig(family="llama", vocab_size=get("vocab_size"), block_size=get("max_position_embeddings"),
                       n_layer=get("num_hidden_layers"), n_head=get("num_attention_heads"),
                       n_kv_head=get("num_key_value_heads") if hf.get("num_key_value_heads") else 0,
                       n_embd=get("hidden_size"), head_dim=get("head_dim") if hf.get("head_dim") else 0,
                       intermediate_size=get("intermediate_size"), rope_theta=float(rope_theta),
                       norm_eps=get("rms_norm_eps", 1e-6, float), bias=bias, qkv_bias=qkv_bias,
                       tie_embeddings=flag("tie_word_embeddings", False))


def hf_config(config: ModelConfig, base: dict | None = None) -> dict:
    """The Hugging Face config.json of a model with our `config`, written over `base` (the original model's
    config.json, whose other fields such as token ids are kept). A LLaMA-style config with q/k/v biases only
    becomes Qwen2. Checked by reading it back."""
    c = config
    if c.family == "gpt2":
        if not c.bias or c.n_kv_head != c.n_head or c.head_dim * c.n_head != c.n_embd:
            raise UserError("a GPT-2 style model needs bias=True, n_kv_head == n_head and head_dim == n_embd // "
                            "n_head to be written as GPT2LMHeadModel")
        hf = {"architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2",
              "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
              "n_head": c.n_head, "n_inner": c.intermediate_size, "activation_function": "gelu_new",
              "layer_norm_epsilon": c.norm_eps, "scale_attn_weights": True,
              "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}
    else:
        model_type = "qwen2" if c.qkv_bias and not c.bias else "llama"
        hf = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
              "vocab_size": c.vocab_size, "max_position_embeddings": c.block_size, "hidden_size": c.n_embd,
              "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
              "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "rope_scaling": None,
              # rope_theta for transformers 4, rope_parameters for transformers 5
              "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}
        if model_type == "qwen2":
            hf.update(use_sliding_window=False, layer_types=["full_attention"] * c.n_layer)
        else:
            hf.update(attention_bias=c.bias, mlp_bias=c.bias)
    hf["tie_word_embeddings"] = c.tie_embeddings
    hf = {**(base or {}), **hf}
    if config_from_hf(hf, "hf_config") != config:
        raise UserError(f"the config.json written for {config} does not read back as the same model "
                        f"(a field of the original config.json contradicts it?)")
    return hf


def _read_json(path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_hf_config(directory) -> dict:
    return _read_json(Path(directory) / CONFIG_FILE)


# -----------------------------------------------------------------------------
# Weights

def _read_safetensors(path):
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except SafetensorError as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


def weight_files(directory) -> list[Path]:
    """model.safetensors, or model.safetensors.index.json followed by every shard it lists."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    if not (directory / INDEX_FILE).is_file():
        raise UserError(f"{directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE} (only safetensors are read)")
    weight_map = _read_json(directory / INDEX_FILE).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise UserError(f"{directory / INDEX_FILE}: 'weight_map' must map each tensor to a shard file name")
    return [directory / INDEX_FILE, *(directory / shard for shard in sorted(set(weight_map.values())))]


def read_hf_tensors(directory) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of all the shards model.safetensors.index.json lists."""
    tensors = {}
    for path in weight_files(directory):
        if path.name != INDEX_FILE:
            tensors.update(_read_safetensors(path))
    return tensors


def load_hf_state(model, tensors, source):
    """Rename, transpose and split Hugging Face tensors into `model` (checked by model.load_state)."""
    family, tied = model.config.family, model.config.tie_embeddings
    found = {}
    for name, tensor in tensors.items():
        if name.endswith(NOT_WEIGHTS) or (tied and name == "lm_head.weight"):
            continue  # a tied head in the file is ignored, as transformers ignores it
        if family == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        found[name] = tensor
    ours = {name: hf_names(name, family) for name in model.state_dict()
            if not (tied and name == "lm_head.weight")}
    wanted = {theirs for names in ours.values() for theirs in names}
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"{source}: missing tensor '{missing[0]}'" + (f" (and {len(missing) - 1} more)"
                                                                      if len(missing) > 1 else ""))
    unexpected = sorted(set(found) - wanted)
    if unexpected:
        raise UserError(f"{source}: unexpected tensor '{unexpected[0]}' (not part of a {family} model "
                        f"with this config.json)")
    expected = model.state_dict()
    state = {}
    for name, theirs in ours.items():
        parts = [found[part] for part in theirs]
        sizes = row_sizes(name, model.config)
        if sizes is not None:  # check each part, so that an error names the file's tensor
            for part, tensor, rows in zip(theirs, parts, sizes):
                shape = (rows, *expected[name].shape[1:])
                if tuple(tensor.shape) != shape:
                    raise UserError(f"{source}: tensor '{part}' has shape {tuple(tensor.shape)}, "
                                    f"the config expects {shape}")
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        if _is_conv1d(name, tensor, family):
            tensor = tensor.t()
        state[name] = tensor
    load_state(model, state, source)


def hf_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors under Hugging Face names and layouts (the inverse of load_hf_state)."""
    family, tied = model.config.family, model.config.tie_embeddings
    state = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        tensor = tensor.detach()
        if _is_conv1d(name, tensor, family):
            tensor = tensor.t()  # Conv1D: (in, out)
        theirs = hf_names(name, family)
        parts = tensor.split(row_sizes(name, model.config)) if len(theirs) > 1 else [tensor]
        for part, value in zip(theirs, parts):
            state[part] = value.contiguous().cpu()
    return state


# -----------------------------------------------------------------------------
# The entry points

def _stored_dtype(tensors):
    """The floating-point dtype most of a file's tensors have (bfloat16 for most models on the Hub)."""
    dtypes = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32


def from_pretrained(directory, device="cpu", dtype=torch.float32) -> GPT:
    """Our GPT with the weights of a Hugging Face model directory; dtype=None keeps the dtype of the file."""
    directory = Path(directory)
    hf = read_hf_config(directory)
    if "nanoaft" in hf:
        raise UserError(f"{directory}: a nanoAFT model directory; load it with model.load_model")
    model = GPT(config_from_hf(hf, str(directory / CONFIG_FILE)))
    tensors = read_hf_tensors(directory)
    load_hf_state(model, tensors, str(directory))
    return model.to(device=device, dtype=dtype or _stored_dtype(tensors))


STAMP_FILE = "converted_from.json"  # written last into a conversion: its source files' names, sizes and times


def _stamp(hf_dir):
    """What a conversion of `hf_dir` depends on: every file it reads, by size and modification time."""
    names = [CONFIG_FILE, *(path.name for path in weight_files(hf_dir)), *tokenizer_layout(hf_dir),
             "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
    files = {name: [(hf_dir / name).stat().st_size, (hf_dir / name).stat().st_mtime_ns]
             for name in dict.fromkeys(names) if (hf_dir / name).is_file()}
    return {"source": str(hf_dir.resolve()), "files": files}


def _read_stamp(out_dir):
    try:
        return json.loads((Path(out_dir) / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def convert(hf_dir, out_dir) -> Path:
    """Convert Hugging Face model directory `hf_dir` once into a nanoAFT model directory `out_dir`: config.json
    ({"nanoaft": ...}) and model.safetensors by model.save_model, in the dtype of the original file, and the
    tokenizer by tokenizer.save_tokenizer (rank file + pattern + special ids). Idempotent: when `out_dir` already
    holds a conversion of the same files (same names, sizes and times), nothing is read or written. The files
    are written to a temporary directory renamed into place, so `out_dir` is never half written. Returns out_dir."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf = read_hf_config(hf_dir)
    if "nanoaft" in hf:
        raise UserError(f"{hf_dir}: already a nanoAFT model directory, nothing to convert")
    stamp = _stamp(hf_dir)
    if _read_stamp(out_dir) == stamp:
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or (_read_stamp(out_dir) is None and any(out_dir.iterdir()))):
        raise UserError(f"{out_dir}: exists and is not a conversion written by hf.convert; choose another directory")
    enc = load_hf_tokenizer(hf_dir)  # first: a directory without a usable tokenizer fails before gigabytes are read
    model = from_pretrained(hf_dir, dtype=None)
    if enc.n_vocab > model.config.vocab_size:
        raise UserError(f"{hf_dir}: the tokenizer has {enc.n_vocab} tokens but the model only "
                        f"{model.config.vocab_size} embeddings")
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise UserError(f"{hf_dir}: weight '{name}' holds NaN or infinite values")
    tmp, old = (out_dir.with_name(f".{out_dir.name}.{kind}-{os.getpid()}") for kind in ("tmp", "old"))
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp)
        save_tokenizer(enc, tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
    except OSError as e:  # unwritable or full: leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{out_dir}: cannot write the conversion ({e.strerror or e})") from None
    if out_dir.exists():
        os.replace(out_dir, old)  # a previous conversion of other files (or an empty directory)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process put the same conversion in place meanwhile
        if _read_stamp(out_dir) != stamp:
            raise
        shutil.rmtree(tmp)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def save_pretrained(model, directory, source=None, enc=None, max_shard_size=None):
    """Write `model` as a Hugging Face directory: config.json and model.safetensors, or shards of at most
    `max_shard_size` bytes with an index. `source`: the Hugging Face directory the model came from; its
    config.json's other fields are kept and its tokenizer files copied. Otherwise `enc` (a tokenizer.Encoding),
    when given, is written as tokenizer.json + tokenizer_config.json, and its end- and begin-of-text ids go into
    config.json. Returns the directory.

    transformers 5's AutoTokenizer reads that tokenizer.json as written for LLaMA and GPT-2 models, but for
    model_type qwen2 (q/k/v biases only) it builds Qwen2's tokenizer, whose own pre-tokenizer replaces the
    file's: give such a model a Qwen2 tokenizer, or load it with PreTrainedTokenizerFast(tokenizer_file=...)."""
    directory = Path(directory)
    base = None
    if source is not None:
        base = read_hf_config(source)
        if "nanoaft" in base:
            raise UserError(f"{source}: a nanoAFT directory; --source is the original Hugging Face directory")
    hf = hf_config(model.config, base)
    if base is None and enc is not None:
        hf.update(eos_token_id=enc.eot_token, bos_token_id=getattr(enc, "bos_token_id", None))
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    hf["torch_dtype"] = dtype  # transformers 5 calls it dtype, and prefers that one when the original had it
    if "dtype" in hf:
        hf["dtype"] = dtype
    state = hf_state(model)

    directory.mkdir(parents=True, exist_ok=True)
    for stale in [directory / WEIGHTS_FILE, directory / INDEX_FILE, *directory.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)  # transformers would read a leftover single file before our shards
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    shards = [[]]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_size and shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        save_file(state, str(directory / WEIGHTS_FILE), metadata=metadata)
    else:
        weight_map = {}
        for i, names in enumerate(shards, start=1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file({name: state[name] for name in names}, str(directory / file), metadata=metadata)
            weight_map.update(dict.fromkeys(names, file))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (directory / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
    if source is not None:
        copy_tokenizer_files(source, directory)
    elif enc is not None:
        write_tokenizer_json(enc, directory)
    return directory


# -----------------------------------------------------------------------------
# command line: export

@dataclass
class ExportConfig:
    ckpt: str                       # nanoAFT model, checkpoint or run directory
    out: str                        # where to write the Hugging Face directory
    source: str = ""                # the original Hugging Face directory: its config fields and tokenizer files
    max_shard_size: int = bounded(0, min=0)  # bytes per safetensors shard (0: one file)


def _holds_nanoaft_model(directory):
    """Whether `directory` (a run, checkpoint or model directory) holds a nanoAFT model that an export would ruin."""
    for candidate in (Path(directory), Path(directory) / "checkpoint"):
        try:
            if "nanoaft" in json.loads((candidate / CONFIG_FILE).read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def export(cfg):
    """Write the model and tokenizer of a nanoAFT directory as a Hugging Face directory (the one loader,
    checkpoint.load_model_and_tokenizer, reads it). Every flag is checked before the model is read."""
    from checkpoint import load_model_and_tokenizer  # here: checkpoint.py reaches this file lazily too

    validate(cfg)  # the command line did already; a notebook's ExportConfig(...) did not
    if not cfg.ckpt.strip():
        raise UserError("--ckpt is empty: give the nanoAFT model, checkpoint or run directory to export")
    if cfg.source and not Path(cfg.source).is_dir():
        raise UserError(f"--source={cfg.source}: no such directory (the original Hugging Face model)")
    check_output(cfg.out, "out")  # an empty --out would write into the current directory
    if _holds_nanoaft_model(cfg.out):  # its config.json would be overwritten by the Hugging Face one
        raise UserError(f"--out={cfg.out} holds a nanoAFT model; export to another directory")
    model, enc = load_model_and_tokenizer(cfg.ckpt)
    save_pretrained(model, cfg.out, source=cfg.source or None, enc=enc, max_shard_size=cfg.max_shard_size or None)
    print(f"wrote {cfg.out}")
    return Path(cfg.out)


if __name__ == "__main__":
    main(export, ExportConfig)
