"""The language model: a decoder-only transformer in plain PyTorch, in two families (ModelConfig.family). `GPT.forward`
returns logits for EVERY position: scoring a chain of thought needs them all. The sampler (sample.py) passes its
`kv_cache` (the model calls `kv_cache.update(layer, k, v)` and reads `kv_cache.pos`) and `left_pad`.
"""

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from configurator import UserError


@dataclass
class ModelConfig:
    family: str = "llama"           # "llama" (RoPE, RMSNorm, SwiGLU) or "gpt2" (learned positions, LayerNorm, GELU)
    vocab_size: int = 1024          # tokens, including special tokens
    block_size: int = 512           # longest sequence the model handles (its context)
    n_layer: int = 4                # transformer blocks
    n_head: int = 4                 # query heads
    n_kv_head: int = 0              # key/value heads; 0 means n_head, fewer means grouped-query attention
    n_embd: int = 128               # residual stream width
    head_dim: int = 0               # per-head width; 0 means n_embd // n_head
    intermediate_size: int = 0      # MLP hidden width; 0 means 4*n_embd (gpt2) or ~8/3*n_embd rounded to 32 (llama)
    rope_theta: float = 10000.0     # rotary base (llama)
    norm_eps: float = 1e-5          # epsilon of RMSNorm / LayerNorm
    bias: bool = False              # biases in every linear layer and norm (gpt2 checkpoints have them)
    qkv_bias: bool = False          # biases on q/k/v projections only (Qwen2)
    tie_embeddings: bool = True     # output head shares the token embedding matrix

    def __post_init__(self):
        zero = ("n_kv_head", "head_dim", "intermediate_size")  # may be 0: "derive it" below
        for f in fields(self):  # a wrong type, NaN or size names its field here, not as a traceback later
            value, kinds = getattr(self, f.name), (int, float) if f.type is float else f.type  # an int is a float
            if isinstance(value, bool) != (f.type is bool) or not isinstance(value, kinds):  # True is not an int
                raise UserError(f"ModelConfig.{f.name} must be {f.type.__name__}, got {value!r}")
            least = ">= 0" if f.name in zero else "> 0"
            if f.type in (int, float) and not (math.isfinite(value) and (value > 0 or value == 0 and f.name in zero)):
                raise UserError(f"ModelConfig.{f.name} must be finite and {least}, not {value!r}")
        if self.family not in ("llama", "gpt2"):
            raise UserError(f"ModelConfig.family must be 'llama' or 'gpt2', got {self.family!r}")
        self.n_kv_head = self.n_kv_head or self.n_head
        if not self.head_dim and self.n_embd % self.n_head:  # head_dim 0 means n_embd // n_head: it must divide
            raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.family == "llama" and self.head_dim % 2:
            raise UserError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.intermediate_size == 0:  # SwiGLU's three matrices at ~8/3 n_embd: a 4x GELU MLP's parameter count
            self.intermediate_size = 4 * self.n_embd if self.family == "gpt2" else 32 * math.ceil(8 * self.n_embd / 96)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # weight * x / sqrt(mean(x^2) + eps), in float32 whatever the activation dtype (as LLaMA)
        if x.dtype == torch.float32:  # in float32 the weight goes inside the one call: decoding is many small steps
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def make_norm(config):
    if config.family == "gpt2":
        return nn.LayerNorm(config.n_embd, config.norm_eps, bias=config.bias)
    return RMSNorm(config.n_embd, config.norm_eps)


def rope_tables(head_dim, length, theta):
    """cos, sin (length, head_dim) of the angles position * theta^(-2j/head_dim) turning pair (j, j + head_dim/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hd/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq).repeat(1, 2)  # (L, hd): j, j + hd/2
    return angles.cos(), angles.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)  # (..., hd/2) each
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """x (B, h, T, hd) with each pair (x1_j, x2_j) turned by its angle; keeps x's dtype (autocast: tables float32)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


def attention_mask(T, start, left_pad, device):
    """(B|1, 1, T, start + T) bool: query start+i sees keys 0..start+i, except a row's left padding."""
    query_pos = torch.arange(start, start + T, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(start + T, device=device)  # (Tk,)
    allowed = key_pos <= query_pos  # (T, Tk)
    if left_pad is not None:  # a padding query sees itself only, so no softmax row is empty (that would give NaN)
        allowed = (allowed & (key_pos >= left_pad[:, None, None])) | (key_pos == query_pos)  # (B, T, Tk)
    return allowed.unsqueeze(-3)


def reference_attention(q, k, v, attn_mask=None, is_causal=False, enable_gqa=True):
    """Plain masked-softmax attention with the signature of F.scaled_dot_product_attention: the readable definition
    and the test oracle. q (B, h, Tq, hd); k, v (B, h_kv, Tk, hd); attn_mask (B, 1, Tq, Tk) bool, True = attend."""
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)  # (B, h, Tk, hd): each kv head serves n_rep query heads
    v = v.repeat_interleave(n_rep, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, h, Tq, Tk)
    if is_causal:
        attn_mask = attention_mask(q.shape[2], k.shape[2] - q.shape[2], None, q.device)
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float("-inf"))
    return att.softmax(dim=-1) @ v  # (B, h, Tq, hd)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # q, k and v from one matrix, rows [W_q; W_k; W_v], as GPT-2's c_attn (hf.py maps Hugging Face's q/k/v_proj)
        self.qkv_proj = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim,
                                  bias=config.bias or config.qkv_bias)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.attend = F.scaled_dot_product_attention  # or reference_attention (GPT.set_attention)

    def forward(self, x, rope, kv_cache, layer, attn_mask, is_causal):
        B, T, _ = x.shape
        h, h_kv = self.n_head, self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, h + 2 * h_kv, self.head_dim).transpose(1, 2)  # (B, h + 2h_kv, T, hd)
        qk, v = qkv.split([h + h_kv, h_kv], dim=1)  # (B, h + h_kv, T, hd), (B, h_kv, T, hd)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # queries and keys in one call: they share the positions
        q, k = qk.split([h, h_kv], dim=1)  # (B, h, T, hd), (B, h_kv, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, h_kv, T_past + T, hd): the earlier positions too
        y = self.attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=h != h_kv)  # (B, h, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, h * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, H, bias = config.n_embd, config.intermediate_size, config.bias
        self.gate_proj = nn.Linear(C, H, bias=bias) if config.family == "llama" else None
        self.up_proj = nn.Linear(C, H, bias=bias)
        self.down_proj = nn.Linear(H, C, bias=bias)

    def forward(self, x):
        if self.gate_proj is not None:  # llama: SwiGLU
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))  # gpt2: GELU


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm1, self.attn = make_norm(config), Attention(config)  # (registered in this order: state_dict's)
        self.norm2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x, rope, kv_cache, layer, attn_mask, is_causal):
        x = x + self.attn(self.norm1(x), rope, kv_cache, layer, attn_mask, is_causal)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.family == "gpt2":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if config.family == "llama":  # recomputed, never saved
            cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd)
            self.register_buffer("rope_sin", sin, persistent=False)
        init_weights(self)
        self.checkpoint_activations = False  # a training choice, never saved: recompute activations in backward

    def set_attention(self, kind):  # "sdpa" (PyTorch's fused kernel, the default) or "reference" (the oracle)
        for block in self.blocks:
            block.attn.attend = {"sdpa": F.scaled_dot_product_attention, "reference": reference_attention}[kind]

    def forward(self, idx, targets=None, kv_cache=None, left_pad=None):
        """idx (B, T) ids; targets (B, T) next ids, -100 where unscored; kv_cache: continue after its positions;
        left_pad (B,): padding tokens each row starts with. Returns logits (B, T, V), float32 mean loss or None."""
        T, start = idx.shape[1], kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        plain = left_pad is None and (start == 0 or T == 1)  # a fresh causal pass, or one token that sees all
        attn_mask = None if plain else attention_mask(T, start, left_pad, idx.device)  # (B|1, 1, T, start + T)
        is_causal = plain and start == 0

        positions = torch.arange(start, start + T, device=idx.device)  # (T,): every row at start..start+T-1
        if left_pad is not None:  # unless padded: positions count from each row's first real token
            positions = (positions - left_pad[:, None]).clamp(min=0)  # (B, T)
        x, rope = self.wte(idx), None  # (B, T, C); gpt2 adds position vectors, llama rotates queries and keys
        if self.config.family == "gpt2":
            x = x + self.wpe(positions)  # (B|1, T, C)
        else:  # one angle table per row, shared by its heads; a slice (no copy) when every row is at start..start+T-1
            rows = slice(start, start + T) if left_pad is None else positions
            rope = self.rope_cos[rows].unsqueeze(-3), self.rope_sin[rows].unsqueeze(-3)  # (B|1, 1, T, hd)
        recompute = self.checkpoint_activations and torch.is_grad_enabled()
        for layer, block in enumerate(self.blocks):
            args = (x, rope, kv_cache, layer, attn_mask, is_causal)
            x = checkpoint(block, *args, use_reentrant=False) if recompute else block(*args)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def init_weights(model):
    """GPT-2's scheme: weights normal(0, 0.02), biases 0, norms 1. The projections that write into the residual
    stream (o_proj, down_proj) get 0.02 / sqrt(2 * n_layer), so the stream's variance does not grow with depth."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            residual = name.endswith(("o_proj", "down_proj"))
            nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * model.config.n_layer) if residual else 0.02)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def num_params(model, non_embedding=False):
    """Parameter count (a tied head is counted once). non_embedding drops token and position embeddings."""
    embeddings = model.wte.weight.numel() + (model.wpe.weight.numel() if hasattr(model, "wpe") else 0)
    return sum(p.numel() for p in model.parameters()) - (embeddings if non_embedding else 0)


# --- Save and load: config.json + model.safetensors in a directory (no pickle anywhere)
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_model(model, directory, weights=None):
    """Write config.json and model.safetensors. weights: a state dict to write instead of model.state_dict()
    (the full weights of a model sharded across processes). Non-finite weights are refused, never saved."""
    tensors = {name: t.detach().contiguous() for name, t in (weights or model.state_dict()).items()}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # the same storage as wte.weight; safetensors refuses shared tensors
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"{directory}: not saving a model whose tensor '{name}' holds NaN or inf")
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(Path(directory) / WEIGHTS_FILE))
    (Path(directory) / CONFIG_FILE).write_text(json.dumps({"nanoaft": asdict(model.config)}, indent=2) + "\n")


def load_config(directory):
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found (expected a model directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("nanoaft"), dict):
        raise UserError(f"{path}: not a nanoAFT model config (no 'nanoaft' object)")
    try:
        return ModelConfig(**raw["nanoaft"])
    except (TypeError, UserError) as e:  # an unknown field (TypeError names it), a wrong type or value
        raise UserError(f"{path}: {e}") from None


def load_model(directory, device="cpu"):
    """The model that `save_model` wrote; an unreadable file or a wrong tensor is an error naming it."""
    model = GPT(load_config(directory))
    path = Path(directory) / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:  # missing, empty, cut short or not safetensors at all
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    load_state(model, tensors, str(path))
    return model.to(device)


def load_state(model, tensors, source):
    """Copy `tensors` into the model, checking names, shapes and values first (nothing is half-loaded)."""
    expected = {name: t for name, t in model.state_dict().items()
                if not (model.config.tie_embeddings and name == "lm_head.weight")}
    for name in {**expected, **tensors}:  # the model's names first, then any others
        if name not in tensors:
            raise UserError(f"{source}: missing tensor '{name}'")
        if name not in expected:
            raise UserError(f"{source}: unexpected tensor '{name}' (not in a {model.config.family} model)")
        if tensors[name].shape != expected[name].shape:
            raise UserError(f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)}, "
                            f"the config expects {tuple(expected[name].shape)}")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise UserError(f"{source}: tensor '{name}' holds NaN or inf")
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t)
