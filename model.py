"""
The language model: a small decoder-only transformer in plain PyTorch.

One `ModelConfig` covers the two families nanoAFT loads:
- "llama": rotary position embeddings (half-split layout, as Hugging Face checkpoints store them), RMSNorm,
  SwiGLU MLP, grouped-query attention (n_kv_head < n_head), optional q/k/v biases (Qwen2), tied or untied head.
- "gpt2": learned absolute positions, LayerNorm with bias, GELU (tanh approximation), biases everywhere,
  tied head.
Our own small models are LLaMA style.

`GPT.forward` returns logits for EVERY position, (B, T, V), never only the last one: scoring a chain of
thought needs them all. An optional `KVCache` serves incremental decoding (many rows continuing the same
prompts share its keys and values: `shared_prompt_attention`); `left_pad` lets rows of one batch
hold prompts of different lengths (padded on the left, so every row's next token lands in the same column).
"""

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from configurator import UserError


@dataclass
class ModelConfig:
    family: str = "llama"           # "llama" (RoPE, RMSNorm, SwiGLU) or "gpt2" (learned positions, LayerNorm, GELU)
    vocab_size: int = 1024          # tokens, including special tokens
    block_size: int = 512           # longest sequence the model handles (positions / rotary table)
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
        if self.family not in ("llama", "gpt2"):
            raise UserError(f"ModelConfig.family must be 'llama' or 'gpt2', got {self.family!r}")
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.head_dim == 0:
            if self.n_embd % self.n_head:
                raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.family == "llama" and self.head_dim % 2:
            raise UserError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.intermediate_size == 0:
            if self.family == "gpt2":
                self.intermediate_size = 4 * self.n_embd
            else:  # SwiGLU has three matrices; 8/3 keeps the parameter count of a 4x GELU MLP
                self.intermediate_size = 32 * math.ceil(8 * self.n_embd / 3 / 32)


# -----------------------------------------------------------------------------
# Building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # weight * x / sqrt(mean(x^2) + eps), normalized in float32 whatever the activation dtype, as LLaMA does,
        # then cast back before the weight. F.rms_norm is that formula; in float32 it takes the weight too, one
        # operator call instead of four (it matters when decoding a token at a time, sample.py)
        if x.dtype == torch.float32:
            return F.rms_norm(x, x.shape[-1:], self.weight, eps=self.eps)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def make_norm(config):
    if config.family == "llama":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rotary_tables(head_dim, length, theta, device=None):
    """cos and signed sin tables (length, head_dim) in the half-split layout: dimension j is rotated together with
    dimension j + head_dim/2 (Hugging Face's `rotate_half` convention, not the interleaved pairs of the original
    LLaMA code). The sin table's first half is negated, for apply_rotary."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
    sign = torch.ones(head_dim, device=device)
    sign[:head_dim // 2] = -1
    return angles.cos(), sign * angles.sin()


def apply_rotary(x, cos, signed_sin):
    """x (B, h, T, hd); cos, signed_sin (T, hd), or (B, 1, T, hd) when rows sit at different positions; the
    result has x's dtype. With x = [x1, x2] (the two halves) this is x * cos + [-x2, x1] * sin, each pair
    (x1_j, x2_j) rotated by its angle. [-x2, x1] * sin is written as [x2, x1] * [-sin, sin]: torch.roll makes
    [x2, x1] in one operator call where slicing, negating and concatenating take four."""
    out = x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
    return out if out.dtype == x.dtype else out.to(x.dtype)  # under autocast, bf16 x times float32 tables


def reference_attention(q, k, v, attn_mask=None, is_causal=False):
    """Plain masked-softmax attention, the readable definition and the test oracle for the SDPA path.
    q (B, h, Tq, hd); k, v (B, h_kv, Tk, hd); attn_mask (B, 1, Tq, Tk) bool, True = may attend."""
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)  # (B, h, Tk, hd): each kv head serves n_rep query heads
    v = v.repeat_interleave(n_rep, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, h, Tq, Tk)
    if is_causal:
        Tq, Tk = att.shape[-2:]
        attn_mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float("-inf"))
    return att.softmax(dim=-1) @ v  # (B, h, Tq, hd)


def sdpa_attention(q, k, v, attn_mask=None, is_causal=False):
    """The fast path: PyTorch's fused kernel (flash / memory-efficient on GPU), same contract as above."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                          enable_gqa=k.shape[1] != q.shape[1])


def shared_prompt_attention(q, prompt_k, prompt_v, prompt_mask, own_k, own_v):
    """Attention of one new token per row when the rows come in groups of g that continue the same prompt
    (KVCache.fan_out with sharing): the same result as reference_attention over each row's whole cache, but
    each prompt's keys and values are stored and read once instead of g times, and one matrix product serves
    all g rows of a prompt. q (N, h, 1, hd), N = P * g rows, prompt-major; prompt_k, prompt_v (P, h_kv, Tp, hd);
    prompt_mask (P, 1, 1, Tp) bool, True = a real token (None: no padding); own_k, own_v (N, h_kv, t, hd): each
    row's own tokens so far, this one included. Returns (N, h, 1, hd)."""
    N, h, _, hd = q.shape
    P, h_kv, Tp, _ = prompt_k.shape
    g, rep, t = N // P, h // h_kv, own_k.shape[2]
    q = q / math.sqrt(hd)
    # query head j reads kv head j // rep; a prompt's g rows x rep heads are g * rep queries of its kv head
    q_prompt = q.view(P, g, h_kv, rep, hd).transpose(1, 2).reshape(P, h_kv, g * rep, hd)
    s_prompt = q_prompt @ prompt_k.transpose(-2, -1)  # (P, h_kv, g*rep, Tp)
    if prompt_mask is not None:
        s_prompt = s_prompt.masked_fill(~prompt_mask, float("-inf"))
    s_own = q.view(N, h_kv, rep, hd) @ own_k.transpose(-2, -1)  # (N, h_kv, rep, t)
    s_own = s_own.view(P, g, h_kv, rep, t).transpose(1, 2).reshape(P, h_kv, g * rep, t)
    weights = torch.cat([s_prompt, s_own], dim=-1).softmax(dim=-1)  # one softmax over all Tp + t keys
    y_prompt = weights[..., :Tp] @ prompt_v  # (P, h_kv, g*rep, hd)
    w_own = weights[..., Tp:].reshape(P, h_kv, g, rep, t).transpose(1, 2).reshape(N, h_kv, rep, t)
    y = y_prompt.view(P, h_kv, g, rep, hd).transpose(1, 2).reshape(N, h_kv, rep, hd) + w_own @ own_v
    return y.view(N, h, 1, hd)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        qkv_bias = config.bias or config.qkv_bias
        # q, k and v come from one matrix, rows [W_q; W_k; W_v] (GPT-2's c_attn): one matrix product where three
        # take longer, on a CPU above all (hf.py splits and joins it for Hugging Face's separate q/k/v_proj)
        self.qkv_proj = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim,
                                  bias=qkv_bias)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.attend = sdpa_attention

    def forward(self, x, rotary, kv_cache, layer, attn_mask, is_causal):
        B, T, _ = x.shape
        h, h_kv = self.n_head, self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, h + 2 * h_kv, self.head_dim).transpose(1, 2)  # (B, h + 2h_kv, T, hd)
        if rotary is None:
            q, k, v = qkv.split([h, h_kv, h_kv], dim=1)  # (B, h, T, hd), (B, h_kv, T, hd), (B, h_kv, T, hd)
        else:
            qk, v = qkv.split([h + h_kv, h_kv], dim=1)
            q, k = apply_rotary(qk, *rotary).split([h, h_kv], dim=1)  # q and k rotated in one go
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, h_kv, T_past + T, hd); only each row's own when shared
        if kv_cache is not None and kv_cache.prompt_k is not None:
            y = shared_prompt_attention(q, kv_cache.prompt_k[layer], kv_cache.prompt_v[layer], kv_cache.prompt_mask,
                                        k, v)
        else:
            y = self.attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (B, h, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, h * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.family = config.family
        hidden = config.intermediate_size
        if config.family == "llama":
            self.gate_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
            self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
            self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        else:
            self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
            self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)

    def forward(self, x):
        if self.family == "llama":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rotary, kv_cache, layer, attn_mask, is_causal):
        x = x + self.attn(self.norm1(x), rotary, kv_cache, layer, attn_mask, is_causal)
        return x + self.mlp(self.norm2(x))


# -----------------------------------------------------------------------------
# The KV cache

class KVCache:
    """Keys and values of every layer for positions already processed, preallocated to `max_len`.
    All rows advance together (`pos` is one number); rows of different prompt lengths are left-padded.
    After a shared fan_out, the prompts' keys and values are kept once per prompt (`prompt_k`, `prompt_v`,
    `prompt_mask`) and `k`, `v` hold each row's own tokens only, from position `prompt_len` on."""

    SHARE_FROM_ROWS = 64  # fan_out shares the prompts from this many rows on (below it, copying is faster here)

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]  # per layer
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # positions filled so far
        self.max_len = max_len
        self.prompt_k = self.prompt_v = self.prompt_mask = None  # set by a shared fan_out
        self.prompt_len = 0  # the position of column 0 of k and v

    def update(self, layer, k, v):
        """Store the new keys/values (B, h_kv, T, hd) of one layer; return all keys/values so far (each row's
        own only, after a shared fan_out). The position only advances after the last layer, so every layer
        writes into the same columns."""
        if self.prompt_k is not None and k.shape[2] != 1:
            raise ValueError("after a shared fan_out the cache takes one token per row at a time")
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        # narrow is a view of columns first..first+T-1: one operator call, where indexing [:, :, a:b] takes three
        first = self.pos - self.prompt_len
        self.k[layer].narrow(2, first, k.shape[2]).copy_(k)
        self.v[layer].narrow(2, first, k.shape[2]).copy_(v)
        if layer == len(self.k) - 1:
            self.pos = end
        return self.k[layer].narrow(2, 0, end - self.prompt_len), self.v[layer].narrow(2, 0, end - self.prompt_len)

    def fan_out(self, k, left_pad=None, share=None):
        """Row i becomes rows i*k .. i*k+k-1: one prefill, k continuations. left_pad (P,): the prompts' padding.
        Copying repeats every prompt's keys and values k times. Sharing (share=None: when there are at least
        SHARE_FROM_ROWS rows) keeps them once and gives each row fresh room for its own tokens;
        shared_prompt_attention then reads each prompt once per step for its k rows, which pays once the rows
        are many (at 256 rows of the default model, attention ran ~3.5x faster than over copies)."""
        rows = len(self.k[0]) * k
        if share is None:
            share = k > 1 and rows >= self.SHARE_FROM_ROWS
        if not share:
            self.k = [t.repeat_interleave(k, dim=0) for t in self.k]
            self.v = [t.repeat_interleave(k, dim=0) for t in self.v]
            return
        if self.prompt_k is not None:
            raise ValueError("a shared cache cannot be fanned out again")
        self.prompt_k = [t[:, :, :self.pos].contiguous() for t in self.k]  # (P, h_kv, Tp, hd), compact
        self.prompt_v = [t[:, :, :self.pos].contiguous() for t in self.v]
        if left_pad is not None:
            columns = torch.arange(self.pos, device=left_pad.device)
            self.prompt_mask = (columns >= left_pad[:, None])[:, None, None]  # (P, 1, 1, Tp)
        _, h_kv, _, hd = self.k[0].shape
        shape = (rows, h_kv, self.max_len - self.pos, hd)
        self.k = [torch.zeros(shape, device=t.device, dtype=t.dtype) for t in self.k]
        self.v = [torch.zeros(shape, device=t.device, dtype=t.dtype) for t in self.v]
        self.prompt_len = self.pos


# -----------------------------------------------------------------------------
# The model

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
        if config.family == "llama":
            cos, signed_sin = rotary_tables(config.head_dim, config.block_size, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd)
            self.register_buffer("rope_signed_sin", signed_sin, persistent=False)
        init_weights(self)
        # a training choice, not part of the architecture (never saved): recompute each block's activations in
        # the backward pass instead of keeping them, ~1/3 more compute for a fraction of the activation memory
        self.checkpoint_activations = False

    def set_attention(self, kind):
        """'sdpa' (default, fast) or 'reference' (plain softmax attention, the test oracle)."""
        attend = {"sdpa": sdpa_attention, "reference": reference_attention}[kind]
        for block in self.blocks:
            block.attn.attend = attend

    def forward(self, idx, targets=None, kv_cache=None, left_pad=None, ignore_index=-100):
        """idx (B, T) token ids. targets (B, T) next-token ids, `ignore_index` where unscored.
        kv_cache: continue after the cache's positions and store this call's keys/values in it.
        left_pad (B,): how many padding tokens each row starts with; they are never attended to and
        positions count from each row's first real token.
        Returns (logits (B, T, V), loss or None); loss is the mean cross-entropy, computed in float32."""
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        if kv_cache is not None and kv_cache.prompt_k is not None:
            attn_mask, is_causal = None, False  # shared_prompt_attention masks the prompts' padding itself
        else:
            attn_mask, is_causal = self._attention_mask(B, T, start, left_pad, idx.device)

        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if left_pad is None:  # every row at positions start..start+T-1
            if self.config.family == "gpt2":
                x = x + self.wpe.weight.narrow(0, start, T)
            else:  # rows of the tables, (T, hd), shared by all rows and heads: views, no gather
                rotary = (self.rope_cos.narrow(0, start, T).to(x.dtype),
                          self.rope_signed_sin.narrow(0, start, T).to(x.dtype))
        else:  # positions count from each row's first real token
            positions = (torch.arange(start, start + T, device=idx.device) - left_pad[:, None]).clamp(min=0)  # (B, T)
            if self.config.family == "gpt2":
                x = x + self.wpe(positions)
            else:
                rotary = (self.rope_cos[positions][:, None].to(x.dtype),  # (B, 1, T, hd)
                          self.rope_signed_sin[positions][:, None].to(x.dtype))
        for layer, block in enumerate(self.blocks):
            if self.checkpoint_activations and torch.is_grad_enabled():
                x = checkpoint(block, x, rotary, kv_cache, layer, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, rotary, kv_cache, layer, attn_mask, is_causal)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
        return logits, loss

    @staticmethod
    def _attention_mask(B, T, start, left_pad, device):
        """Returns (attn_mask, is_causal) for queries at positions start..start+T-1 over keys 0..start+T-1.
        The common cases need no mask tensor: a fresh causal pass, or one new token that sees everything."""
        no_padding = left_pad is None or not bool(left_pad.any())
        if no_padding and start == 0:
            return None, True
        if no_padding and T == 1:
            return None, False
        query_pos = torch.arange(start, start + T, device=device)[:, None]  # (T, 1)
        key_pos = torch.arange(start + T, device=device)[None, :]  # (1, Tk)
        allowed = (key_pos <= query_pos)[None]  # (1, T, Tk)
        if left_pad is not None:
            # a padding query sees itself only, so no softmax row is empty (that would give NaN)
            allowed = (allowed & (key_pos >= left_pad[:, None, None])) | (key_pos == query_pos)  # (B, T, Tk)
        return allowed.expand(B, T, start + T)[:, None], False  # (B, 1, T, Tk)


def init_weights(model):
    """Initialise every parameter of a fresh model (GPT-2's scheme):
    - linear and embedding weights: normal(0, 0.02);
    - the projections that write into the residual stream (attn.o_proj, mlp.down_proj): normal(0, 0.02 /
      sqrt(2 * n_layer)), so the residual stream's variance does not grow with depth;
    - biases: 0; norm weights: 1 (LayerNorm biases 0).
    A tied head shares the embedding's initialisation."""
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = residual_std if name.endswith(("o_proj", "down_proj")) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def num_params(model, non_embedding=False):
    """Parameter count (a tied head is counted once). non_embedding drops token and position embeddings."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.wte.weight.numel()
        if hasattr(model, "wpe"):
            total -= model.wpe.weight.numel()
    return total


# -----------------------------------------------------------------------------
# Save and load: config.json + model.safetensors in a directory (no pickle anywhere)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_model(model, directory, weights=None):
    """Write config.json and model.safetensors. weights: a state dict to write instead of model.state_dict()
    (the full weights of a model sharded across processes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = model.state_dict() if weights is None else weights
    tensors = {name: t.detach().contiguous() for name, t in weights.items()}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # the same storage as wte.weight; safetensors refuses shared tensors
    save_file(tensors, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({"nanoaft": asdict(model.config)}, indent=2) + "\n")


def load_config(directory):
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found (expected a model directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(raw, dict) or "nanoaft" not in raw:
        raise UserError(f"{path}: not a nanoAFT model config (no 'nanoaft' key; Hugging Face directories "
                        f"are read by from_pretrained)")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(raw["nanoaft"]) - known)
    if unknown:
        raise UserError(f"{path}: unknown config field(s) {', '.join(unknown)}")
    return ModelConfig(**raw["nanoaft"])


def load_model(directory, device="cpu"):
    """Build the model that `save_model` wrote. A missing, unexpected or mis-shaped tensor is an error naming it."""
    directory = Path(directory)
    model = GPT(load_config(directory))
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found")
    load_state(model, load_file(str(path)), str(path))
    return model.to(device)


def join_qkv(tensors):
    """Checkpoints written before q, k and v became one matrix hold blocks.{i}.attn.q_proj/k_proj/v_proj:
    returns `tensors` with each such trio joined into attn.qkv_proj, rows [q; k; v]."""
    tensors = dict(tensors)
    for q_name in [name for name in tensors if ".attn.q_proj." in name]:
        names = [q_name.replace(".q_proj.", f".{part}.") for part in ("q_proj", "k_proj", "v_proj")]
        if all(name in tensors for name in names):
            tensors[q_name.replace(".q_proj.", ".qkv_proj.")] = torch.cat([tensors.pop(name) for name in names])
    return tensors


def load_state(model, tensors, source):
    """Copy `tensors` into the model, checking names and shapes first (nothing is half-loaded)."""
    tensors = join_qkv(tensors)
    expected = {name: t for name, t in model.state_dict().items()
                if not (model.config.tie_embeddings and name == "lm_head.weight")}
    for name in expected:
        if name not in tensors:
            raise UserError(f"{source}: missing tensor '{name}'")
    for name, t in tensors.items():
        if name not in expected:
            raise UserError(f"{source}: unexpected tensor '{name}' (not in a {model.config.family} model)")
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UserError(f"{source}: tensor '{name}' has shape {tuple(t.shape)}, "
                            f"the config expects {tuple(expected[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t)
