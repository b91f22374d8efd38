"""model.py: KV cache equals a full forward, SDPA equals the reference attention, causality, padding,
save/load. Every model here is tiny and float32 so the whole file runs in seconds."""

import json

import pytest
import torch

from configurator import UserError
from model import GPT, KVCache, ModelConfig, load_model, num_params, reference_attention, save_model, shared_prompt_attention

FAMILIES = {
    "llama": dict(family="llama"),
    "llama_gqa": dict(family="llama", n_head=4, n_kv_head=2),
    "qwen2_like": dict(family="llama", n_head=4, n_kv_head=1, qkv_bias=True, tie_embeddings=False),
    "gpt2": dict(family="gpt2", bias=True),
}


def tiny(family="llama", **overrides):
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32)
    cfg.update(FAMILIES[family])
    cfg.update(overrides)
    model = GPT(ModelConfig(**cfg))
    # larger weights than the default init, so that a layout mistake cannot hide under tiny logits
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_matches_full_forward(family):
    model = tiny(family)
    idx = torch.randint(0, 97, (3, 20))
    full, _ = model(idx)  # (B, T, V)
    cache = KVCache(model.config, 3, 20)
    chunks = [model(idx[:, :7], kv_cache=cache)[0]]  # a prefill of 7, then chunks of 1 and 4 tokens
    for t in range(7, 12):
        chunks.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    for t in range(12, 20, 4):
        chunks.append(model(idx[:, t:t + 4], kv_cache=cache)[0])
    incremental = torch.cat(chunks, dim=1)
    assert incremental.shape == full.shape
    assert (incremental - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_equals_reference_attention(family):
    model = tiny(family)
    idx = torch.randint(0, 97, (2, 16))
    fast, _ = model(idx)
    left_pad = torch.tensor([0, 5])
    fast_padded, _ = model(idx, left_pad=left_pad)
    model.set_attention("reference")
    slow, _ = model(idx)
    slow_padded, _ = model(idx, left_pad=left_pad)
    assert (fast - slow).abs().max().item() < 1e-5
    assert (fast_padded - slow_padded).abs().max().item() < 1e-5


@pytest.mark.parametrize("h, h_kv", [(4, 4), (4, 2), (4, 1)])
def test_shared_prompt_attention_equals_attention_over_copied_prompts(h, h_kv):
    torch.manual_seed(0)
    P, g, Tp, t, hd = 3, 5, 7, 4, 8
    q = torch.randn(P * g, h, 1, hd)
    prompt_k, prompt_v = torch.randn(P, h_kv, Tp, hd), torch.randn(P, h_kv, Tp, hd)
    own_k, own_v = torch.randn(P * g, h_kv, t, hd), torch.randn(P * g, h_kv, t, hd)
    left_pad = torch.tensor([0, 3, 6])  # prompt 2 has a single real token
    prompt_mask = (torch.arange(Tp) >= left_pad[:, None])[:, None, None]  # (P, 1, 1, Tp)
    # the oracle: every row holds a copy of its prompt's keys, then its own; padding masked out
    k = torch.cat([prompt_k.repeat_interleave(g, dim=0), own_k], dim=2)
    v = torch.cat([prompt_v.repeat_interleave(g, dim=0), own_v], dim=2)
    mask = torch.cat([prompt_mask.repeat_interleave(g, dim=0), torch.ones(P * g, 1, 1, t, dtype=torch.bool)], dim=-1)
    expected = reference_attention(q, k, v, attn_mask=mask)
    got = shared_prompt_attention(q, prompt_k, prompt_v, prompt_mask, own_k, own_v)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5
    # without padding the mask may be None
    unmasked = shared_prompt_attention(q, prompt_k, prompt_v, None, own_k, own_v)
    full = reference_attention(q, torch.cat([prompt_k.repeat_interleave(g, dim=0), own_k], dim=2),
                               torch.cat([prompt_v.repeat_interleave(g, dim=0), own_v], dim=2))
    assert (unmasked - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("family", ["llama_gqa", "gpt2"])
def test_fanned_out_cache_matches_full_forward(family, share):
    model = tiny(family)
    g = 3
    prompts = torch.randint(0, 97, (2, 6))
    left_pad = torch.tensor([2, 0])
    cache = KVCache(model.config, 2, 12)
    model(prompts, kv_cache=cache, left_pad=left_pad)
    cache.fan_out(g, left_pad, share=share)
    assert (cache.prompt_k is not None) == share
    rows_pad = left_pad.repeat_interleave(g)
    seq = prompts.repeat_interleave(g, dim=0)  # (6, 6)
    for _ in range(5):
        token = torch.randint(0, 97, (2 * g, 1))  # a different continuation in every row
        step, _ = model(token, kv_cache=cache, left_pad=rows_pad)
        seq = torch.cat([seq, token], dim=1)
        full, _ = model(seq, left_pad=rows_pad)
        assert (step[:, -1] - full[:, -1]).abs().max().item() < 1e-4
    if share:
        with pytest.raises(ValueError, match="one token per row"):
            model(torch.zeros(2 * g, 2, dtype=torch.long), kv_cache=cache, left_pad=rows_pad)


def test_shared_prompt_cache_under_bf16_autocast_is_as_accurate_as_copies():
    # under autocast the shared path's matrix products run in bf16; its logits must stay as close to float32's
    # as those of SDPA over copied prompts (a dtype mix-up or a lost mask would be far off)
    model = tiny("llama_gqa")
    prompts, left_pad, g = torch.randint(0, 97, (2, 6)), torch.tensor([2, 0]), 3
    token = torch.randint(0, 97, (2 * g, 1))
    logits = {}
    for share in (False, True):
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                cache = KVCache(model.config, 2, 12)
                model(prompts, kv_cache=cache, left_pad=left_pad)
                cache.fan_out(g, left_pad, share=share)
                logits[share, bf16] = model(token, kv_cache=cache, left_pad=left_pad.repeat_interleave(g))[0].float()
    exact = logits[False, False]
    assert (logits[True, False] - exact).abs().max().item() < 1e-5
    copy_error = (logits[False, True] - exact).abs().max().item()
    assert 0 < (logits[True, True] - exact).abs().max().item() < 2 * copy_error


@pytest.mark.parametrize("family", FAMILIES)
def test_causality(family):
    model = tiny(family)
    idx = torch.randint(0, 97, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 97
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_matches_unpadded_row(family):
    model = tiny(family)
    short = torch.randint(0, 97, (1, 9))
    long = torch.randint(0, 97, (1, 14))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])  # (2, 14)
    padded, _ = model(batch, left_pad=torch.tensor([5, 0]))
    alone, _ = model(short)
    assert (padded[0, 5:] - alone[0]).abs().max().item() < 1e-5
    assert torch.isfinite(padded).all()  # padding queries must not produce NaN


def test_forward_returns_every_position_and_masked_loss():
    model = tiny()
    idx = torch.randint(0, 97, (2, 10))
    targets = torch.randint(0, 97, (2, 10))
    targets[:, :4] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 10, 97)
    manual = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 97), targets[:, 4:].reshape(-1))
    assert abs(loss.item() - manual.item()) < 1e-6


def test_config_defaults_and_param_count():
    cfg = ModelConfig(n_embd=96, n_head=6, n_layer=3, vocab_size=50)
    assert cfg.n_kv_head == 6 and cfg.head_dim == 16
    assert cfg.intermediate_size % 32 == 0 and cfg.intermediate_size >= 8 * 96 / 3
    model = GPT(cfg)
    C, H = 96, cfg.intermediate_size
    per_block = 4 * C * C + 3 * C * H + 2 * C  # attention, SwiGLU, two RMSNorm weights
    assert num_params(model) == 50 * C + 3 * per_block + C  # tied head counted once
    assert num_params(model, non_embedding=True) == 3 * per_block + C
    with pytest.raises(UserError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_identical_logits(tmp_path, family):
    model = tiny(family)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 12))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert loaded.config == model.config


def test_checkpoint_with_separate_q_k_v_loads(tmp_path):
    """Model files written before q, k and v became one matrix (attn.q_proj, k_proj, v_proj) still load, into
    the same function."""
    from safetensors.torch import load_file, save_file

    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16,
                            qkv_bias=True))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv_proj.bias.normal_()  # not zeros: the biases must land in the right rows too
    save_model(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    old = {}
    for name, t in tensors.items():
        if ".qkv_proj." in name:  # rows [q (4 heads x 8); k (2 x 8); v (2 x 8)]
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), t.split([32, 16, 16])):
                old[name.replace("qkv_proj", part)] = rows.contiguous()
        else:
            old[name] = t
    save_file(old, str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path)
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(model(idx)[0], loaded(idx)[0])


def test_load_errors_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(tiny(), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    missing = dict(tensors)
    del missing["blocks.1.mlp.up_proj.weight"]
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="missing tensor 'blocks.1.mlp.up_proj.weight'"):
        load_model(tmp_path)

    wrong = dict(tensors)
    wrong["blocks.0.attn.o_proj.weight"] = torch.zeros(3, 3)
    save_file(wrong, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="'blocks.0.attn.o_proj.weight' has shape"):
        load_model(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({"nanoaft": {"n_layr": 2}}))
    with pytest.raises(UserError, match="n_layr"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nowhere")
