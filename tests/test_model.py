"""model.py: a KV-cached forward equals a full one, SDPA equals the reference attention, rotary embeddings
rotate, causality, padding, save/load and its errors. Every model here is tiny and float32 so the whole file runs
in seconds."""

import json
import math

import pytest
import torch

from configurator import UserError
from model import GPT, ModelConfig, apply_rope, load_model, num_params, rope_tables, save_model
from sample import KVCache

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


@pytest.mark.parametrize("family", ["llama_gqa", "gpt2"])
def test_fanned_out_cache_matches_full_forward(family):
    model = tiny(family)
    g = 3
    prompts = torch.randint(0, 97, (2, 6))
    left_pad = torch.tensor([2, 0])
    cache = KVCache(model.config, 2, 12)
    model(prompts, kv_cache=cache, left_pad=left_pad)
    cache.fan_out(g)
    assert cache.k[0].shape[0] == 2 * g and cache.pos == 6
    rows_pad = left_pad.repeat_interleave(g)
    seq = prompts.repeat_interleave(g, dim=0)  # (6, 6)
    for _ in range(5):
        token = torch.randint(0, 97, (2 * g, 1))  # a different continuation in every row
        step, _ = model(token, kv_cache=cache, left_pad=rows_pad)
        seq = torch.cat([seq, token], dim=1)
        full, _ = model(seq, left_pad=rows_pad)
        assert (step[:, -1] - full[:, -1]).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(2 * g, 2, dtype=torch.long), kv_cache=cache, left_pad=rows_pad)


def test_cache_under_bf16_autocast_is_as_accurate_as_a_full_forward():
    # under autocast the keys come out in bf16 and are stored in the float32 cache, the rotary tables stay float32:
    # the cached logits must stay as close to float32's as those of a full bf16 forward (a dtype mix-up or a lost
    # mask would be far off)
    model = tiny("llama_gqa")
    prompts, left_pad, g = torch.randint(0, 97, (2, 6)), torch.tensor([2, 0]), 3
    token = torch.randint(0, 97, (2 * g, 1))
    seq = torch.cat([prompts.repeat_interleave(g, dim=0), token], dim=1)  # (6, 7)
    logits = {}
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cache = KVCache(model.config, 2, 12)
            model(prompts, kv_cache=cache, left_pad=left_pad)
            cache.fan_out(g)
            logits["cached", bf16] = model(token, kv_cache=cache, left_pad=left_pad.repeat_interleave(g))[0][:, -1]
            logits["full", bf16] = model(seq, left_pad=left_pad.repeat_interleave(g))[0][:, -1]
            assert logits["cached", bf16].dtype == (torch.bfloat16 if bf16 else torch.float32)
    exact = logits["full", False]
    assert (logits["cached", False] - exact).abs().max().item() < 1e-5
    full_error = (logits["full", True].float() - exact).abs().max().item()
    assert 0 < (logits["cached", True].float() - exact).abs().max().item() < 2 * full_error


def test_rope_rotates_pairs_and_scores_depend_only_on_the_distance():
    hd, theta = 8, 100.0
    cos, sin = rope_tables(hd, 16, theta)  # (16, hd)
    x = torch.randn(1, 1, 1, hd)
    for pos in (0, 3, 15):
        got = apply_rope(x, cos[pos], sin[pos])[0, 0, 0]
        for j in range(hd // 2):  # pair (j, j + hd/2) turned by pos * theta^(-2j/hd), as a 2-D rotation
            angle = pos * theta ** (-2 * j / hd)
            a, b = x[0, 0, 0, j].item(), x[0, 0, 0, j + hd // 2].item()
            assert got[j].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-5)
            assert got[j + hd // 2].item() == pytest.approx(a * math.sin(angle) + b * math.cos(angle), abs=1e-5)
    q, k = torch.randn(hd), torch.randn(hd)

    def score(i, j):  # a query at position i against a key at position j
        return (apply_rope(q, cos[i], sin[i]) @ apply_rope(k, cos[j], sin[j])).item()
    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


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
    with pytest.raises(UserError, match="n_embd=30 is not divisible by n_head=4"):  # not "an even head_dim, got 7"
        ModelConfig(n_embd=30, n_head=4)
    assert ModelConfig(n_embd=30, n_head=4, head_dim=8).head_dim == 8  # an explicit head_dim need not divide it


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_identical_logits(tmp_path, family):
    model = tiny(family)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 12))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert loaded.config == model.config


def test_separate_q_k_v_files_are_refused_by_name(tmp_path):
    """A model file with attn.q_proj/k_proj/v_proj (before q, k and v became one matrix) is not migrated: an
    educational repo regenerates its files. Loading names the missing qkv_proj."""
    from safetensors.torch import load_file, save_file

    model = tiny()
    save_model(model, tmp_path)
    old = {}
    for name, t in load_file(str(tmp_path / "model.safetensors")).items():
        parts = zip(("q_proj", "k_proj", "v_proj"), t.split(32)) if ".qkv_proj." in name else [(None, t)]
        for part, rows in parts:
            old[name.replace("qkv_proj", part) if part else name] = rows.contiguous()
    save_file(old, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=r"missing tensor 'blocks.0.attn.qkv_proj.weight'"):
        load_model(tmp_path)


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


def test_unreadable_weights_files_are_named(tmp_path):
    save_model(tiny(), tmp_path)
    weights = tmp_path / "model.safetensors"
    whole = weights.read_bytes()
    for content in (b"", whole[: len(whole) // 2], b"not safetensors at all, just text\n" * 10):
        weights.write_bytes(content)
        with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file"):
            load_model(tmp_path)
    weights.unlink()
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("n_layer", "four", "n_layer must be int, got 'four'"),
    ("n_layer", 2.5, "n_layer must be int"),
    ("tie_embeddings", 1, "tie_embeddings must be bool"),
    ("vocab_size", True, "vocab_size must be int"),
    ("rope_theta", "1e4", "rope_theta must be float"),
    ("n_head", 0, "n_head must be finite and > 0, not 0"),
    ("n_kv_head", -1, "n_kv_head must be finite and >= 0, not -1"),
    ("norm_eps", float("nan"), "norm_eps must be finite"),
    ("rope_theta", float("inf"), "rope_theta must be finite"),
    ("family", "t5", "family must be 'llama' or 'gpt2'"),
    ("n_layr", 2, "n_layr"),
])
def test_bad_config_values_are_named_with_the_file(tmp_path, field, value, message):
    save_model(tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["nanoaft"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))  # NaN and Infinity as JSON writes them
    with pytest.raises(UserError, match=r"config\.json: .*" + message):
        load_model(tmp_path)


def test_config_json_that_is_not_a_nanoaft_config_is_named(tmp_path):
    for text in ("{not json", "[1, 2]", '{"nanoaft": 3}', '{"model_type": "llama"}'):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(UserError, match=r"config\.json: (invalid JSON|not a nanoAFT model config)"):
            load_model(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="invalid JSON"):
        load_model(tmp_path)


def test_non_finite_weights_are_never_loaded_nor_saved(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny()
    save_model(model, tmp_path / "good")
    tensors = load_file(str(tmp_path / "good" / "model.safetensors"))
    for bad in (float("nan"), float("inf")):
        broken = dict(tensors)
        broken["blocks.1.mlp.down_proj.weight"] = broken["blocks.1.mlp.down_proj.weight"].clone()
        broken["blocks.1.mlp.down_proj.weight"][3, 5] = bad
        save_file(broken, str(tmp_path / "good" / "model.safetensors"))
        with pytest.raises(UserError, match="tensor 'blocks.1.mlp.down_proj.weight' holds NaN or inf"):
            load_model(tmp_path / "good")

    with torch.no_grad():
        model.blocks[0].norm2.weight[0] = float("nan")
    with pytest.raises(UserError, match="bad: not saving .*'blocks.0.norm2.weight' holds NaN or inf"):
        save_model(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing written, not even the directory
