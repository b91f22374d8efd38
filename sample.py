"""Sampling from the model: the KV cache, batched decoding, hand-written temperature / top-k / top-p.

`generate` prefills every prompt once, copies each prompt's cache to its `num_samples` rows, then decodes one token
per step for all rows together until each row has produced end-of-text or `max_new_tokens`. It returns the token
ids and the model's log-probability of every generated token.

    python sample.py --ckpt=out/vft --question="Tom has 3 apples and buys 5 more. How many apples does he have?"
    python sample.py --ckpt=out/vft --prompt="Question: ..." --num_samples=4 --temperature=0.8
"""

import math
from dataclasses import dataclass

import torch

from checkpoint import load_model_and_tokenizer
from compute import pick_device
from configurator import UserError, main
from data.dataset import format_prompt
from sequences import encode_prompt


class KVCache:
    """Keys and values of every layer for the positions processed so far, preallocated to `max_len` positions.
    All rows advance together (`pos` is one number), so prompts of different lengths are left-padded."""

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]  # per layer
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # positions filled so far

    def update(self, layer, k, v):
        """Store one layer's new keys and values (B, h_kv, T, hd) after the first `pos` positions; return all of
        them so far, (B, h_kv, pos + T, hd). `pos` advances after the last layer: every layer fills the same columns."""
        T, end = k.shape[2], self.pos + k.shape[2]
        if end > self.k[layer].shape[2]:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.k[layer].shape[2]}")
        self.k[layer].narrow(2, self.pos, T).copy_(k)  # narrow(dim, first, length): a view of those columns
        self.v[layer].narrow(2, self.pos, T).copy_(v)
        if layer == len(self.k) - 1:
            self.pos = end
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)

    def fan_out(self, n):
        """Row i becomes rows i*n .. i*n+n-1, each with a copy of its keys and values: one prefill, n samples."""
        self.k = [t.repeat_interleave(n, dim=0) for t in self.k]  # (B * n, h_kv, max_len, hd)
        self.v = [t.repeat_interleave(n, dim=0) for t in self.v]


@dataclass
class Samples:
    tokens: torch.Tensor    # (N, max_new) generated ids; after a row's end-of-text, padded with end-of-text
    logprobs: torch.Tensor  # (N, max_new) float32 log p(token) under the model at temperature 1; 0 after the end
    lengths: torch.Tensor   # (N,) tokens generated per row, its end-of-text included when produced
    finished: torch.Tensor  # (N,) bool: the row ended with end-of-text (not cut by max_new_tokens)

    def row(self, i):
        """The generated ids of row i, end-of-text included when produced."""
        return self.tokens[i, : self.lengths[i]].tolist()


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Scale by temperature and keep only the top-k tokens and the smallest set whose probability reaches
    top_p (the nucleus); everything else gets -inf. logits (N, V) float32. top_k=0 and top_p=1 disable."""
    if temperature != 1.0:  # a tiny one: logits shifted first, else they overflow to inf (and softmax to NaN)
        logits = (logits - logits.amax(-1, keepdim=True) if temperature < 1e-3 else logits) / max(temperature, 1.2e-38)
    if top_k > 0 and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = mass_before >= max(top_p, 1.2e-38)  # the best token always stays (its mass_before is 0)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs, generator=None):
    """One index per row of probs (N, V), index i with probability probs[i] / sum(probs): inverse-transform
    sampling, one uniform number per row (torch.multinomial draws one random number per vocabulary entry)."""
    cdf = probs.cumsum(dim=-1)  # (N, V)
    total = cdf[:, -1:]  # (N, 1)
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype)  # (N, 1) in [0, 1)
    # u < 1 keeps u * total below the total (a float product with a factor below 1 never rounds up to the other), and
    # right=True picks the first entry whose cdf exceeds it: a valid index, never a zero-probability token (no step)
    return torch.searchsorted(cdf, u * total, right=True).squeeze(-1)  # (N,)


def pick_next(logits, temperature, top_k, top_p, generator):
    """One token per row of logits (N, V): the argmax at temperature 0, else a draw from the filtered distribution."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1), generator)


def check_settings(max_new_tokens, num_samples, temperature, top_k, top_p):
    """A UserError naming the first setting that generate cannot use."""
    for name, value, ok, need in (
            ("max_new_tokens", max_new_tokens, isinstance(max_new_tokens, int) and max_new_tokens >= 1, "an int >= 1"),
            ("num_samples", num_samples, isinstance(num_samples, int) and num_samples >= 1, "an int >= 1"),
            ("temperature", temperature, math.isfinite(temperature) and temperature >= 0, "finite and >= 0"),
            ("top_k", top_k, isinstance(top_k, int) and top_k >= 0, "an int >= 0 (0: all tokens)"),
            ("top_p", top_p, 0 < top_p <= 1, "in (0, 1] (1: all tokens)")):
        if not ok:
            raise UserError(f"{name} must be {need}, got {value!r}")


def generate(model, prompts, max_new_tokens, num_samples=1, temperature=1.0, top_k=0, top_p=1.0,
             eot_id=None, generator=None, use_cache=True, n_vocab=None):
    """Continue each prompt (a list of token ids) num_samples times. Rows come out prompt-major (prompt i's samples
    are rows i*num_samples .. i*num_samples+num_samples-1); prompts of different lengths are left-padded. n_vocab:
    the tokenizer's size; ids at or above it (the padding rows of an embedding larger than the tokenizer, as
    Qwen2's) are never drawn, and log-probs are over the tokenizer's ids. use_cache=False recomputes the whole
    sequence at every step (the same result; kept for the benchmark and as a test oracle)."""
    check_settings(max_new_tokens, num_samples, temperature, top_k, top_p)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    config, device = model.config, next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > config.block_size:
        raise UserError(f"a prompt of {longest} tokens and max_new_tokens={max_new_tokens} do not fit the model's "
                        f"context of {config.block_size} tokens")
    if outside := [t for p in prompts for t in p if not 0 <= t < config.vocab_size]:
        raise UserError(f"token id {outside[0]} is outside the model's vocabulary of {config.vocab_size}")
    with torch.inference_mode():  # no autograd bookkeeping at all (no_grad still counts tensor versions)
        pad_id = eot_id if eot_id is not None else 0
        idx = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompts], device=device)  # (P, Tp)
        left_pad = torch.tensor([longest - len(p) for p in prompts], device=device)  # (P,)
        if not left_pad.any():
            left_pad = None  # no padding: the model then needs no attention mask and no position shift

        dtype = model.lm_head.weight.dtype
        cache = KVCache(config, len(prompts), longest + max_new_tokens, device, dtype) if use_cache else None
        logits, _ = model(idx, kv_cache=cache, left_pad=left_pad)  # prefill once per prompt
        logits = logits[:, -1, :n_vocab].float().repeat_interleave(num_samples, dim=0)  # (N, V)
        if not bool(torch.isfinite(logits).all()):
            raise UserError("the model's logits are NaN or inf (are its weights finite?)")
        if use_cache:
            cache.fan_out(num_samples)
        if left_pad is not None:
            left_pad = left_pad.repeat_interleave(num_samples)  # (N,)
        seq = idx.repeat_interleave(num_samples, dim=0)  # (N, Tp), only needed without the cache

        # each step keeps the drawn ids and their log-probs. A row that has ended goes on drawing (rows never interact,
        # so the others are unaffected); what it draws after its end-of-text is overwritten once below, not every step
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)  # (N,)
        ids, logps = [], []
        for t in range(max_new_tokens):
            next_id = pick_next(logits, temperature, top_k, top_p, generator)  # (N,)
            ids.append(next_id)
            logps.append(logits.log_softmax(dim=-1).gather(-1, next_id[:, None]))  # (N, 1)
            if eot_id is not None:
                finished |= next_id == eot_id
            if t == max_new_tokens - 1 or eot_id is not None and bool(finished.all()):
                break
            if use_cache:
                logits, _ = model(next_id[:, None], kv_cache=cache, left_pad=left_pad)
            else:
                seq = torch.cat([seq, next_id[:, None]], dim=1)
                logits, _ = model(seq, left_pad=left_pad)
            logits = logits[:, -1, :n_vocab].float()

        steps = torch.stack(ids, dim=1)  # (N, t)
        is_end = steps == (-1 if eot_id is None else eot_id)  # (N, t); no token id is -1
        after_end = is_end.cumsum(dim=1) > is_end.long()  # (N, t): an end-of-text earlier in the row
        tokens = torch.full((len(steps), max_new_tokens), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(len(steps), max_new_tokens, dtype=torch.float32, device=device)
        tokens[:, :steps.shape[1]] = steps.masked_fill(after_end, pad_id)
        logprobs[:, :steps.shape[1]] = torch.cat(logps, dim=1).masked_fill(after_end, 0.0)
        lengths = (~after_end).sum(dim=1)  # (N,) up to and including the first end-of-text
    return Samples(tokens.clone(), logprobs.clone(), lengths.clone(), finished.clone())


# --- command line

@dataclass
class Config:
    ckpt: str = "out/vft"           # run, checkpoint or model directory (nanoAFT or Hugging Face), with its tokenizer
    prompt: str = ""                # raw prompt text
    question: str = ""              # or a question, wrapped in the task's prompt format
    num_samples: int = 4            # continuations of the prompt
    max_new_tokens: int = 192       # tokens per continuation at most
    temperature: float = 0.8        # 0 = greedy
    top_k: int = 0                  # keep the k likeliest tokens (0 = all)
    top_p: float = 1.0              # nucleus mass (1 = all)
    seed: int = 0                   # sampling seed
    device: str = "cpu"             # "cpu", "cuda", ...


def run(cfg):
    if bool(cfg.prompt) == bool(cfg.question.strip()):  # a question of only spaces is none
        raise UserError("give exactly one of --prompt=... or --question=...")
    if not cfg.ckpt:
        raise UserError("--ckpt is empty: give a run, checkpoint or model directory")
    check_settings(cfg.max_new_tokens, cfg.num_samples, cfg.temperature, cfg.top_k, cfg.top_p)  # before loading
    device = pick_device(cfg.device)  # a device this machine lacks is one line too
    model, enc = load_model_and_tokenizer(cfg.ckpt, device)
    text = cfg.prompt or format_prompt(cfg.question)
    out = generate(model.eval(), [encode_prompt(enc, text)], cfg.max_new_tokens, num_samples=cfg.num_samples,
                   temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eot_id=enc.eot_token,
                   generator=torch.Generator(device=device).manual_seed(cfg.seed), n_vocab=enc.n_vocab)
    texts = []
    for i in range(cfg.num_samples):
        texts.append(enc.decode([t for t in out.row(i) if t != enc.eot_token], errors="replace"))
        mean_logp = out.logprobs[i, :out.lengths[i]].mean().item()
        print(f"--- sample {i + 1}/{cfg.num_samples} (mean log-prob {mean_logp:.3f}"
              f"{'' if out.finished[i] else ', cut at max_new_tokens'})\n{text}{texts[-1]}")
    return texts


if __name__ == "__main__":
    main(run, Config)
