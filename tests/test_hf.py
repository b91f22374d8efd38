"""Tests of hf.py against transformers itself: tiny random GPT-2, Llama and Qwen2 models built and saved by
transformers must give our model the same logits and the same greedy continuations, convert() must write a
nanoAFT directory holding that same model and tokenizer (once), and what save_pretrained writes must load in
transformers with the same logits and token ids."""

import copy
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from configurator import UserError  # noqa: E402
from hf import ExportConfig, config_from_hf, convert, export, from_pretrained, hf_config, save_pretrained  # noqa: E402
from model import GPT, ModelConfig, load_model, save_model  # noqa: E402
from tokenizer import load_tokenizer, save_ranks  # noqa: E402

VOCAB, CONTEXT = 300, 64
transformers.logging.set_verbosity_error()


def scramble(model, seed=0, std=0.3):
    """Redraw every weight far from the default initialisation (0.02 std, unit norms, zero biases), so that
    a transposed, swapped or mis-rotated tensor changes the logits by much more than the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm = p.dim() == 1 and ("norm" in name or "ln" in name) and not name.endswith("bias")
            p.copy_(1 + 0.3 * noise if is_norm else std * noise)
    return model.eval()


def reference_model(kind):
    """A tiny transformers model: "gpt2", "llama" (GQA, untied head), "llama-tied" (SmolLM's shape), "qwen2"."""
    llama_like = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CONTEXT, rope_theta=500.0,
                      rms_norm_eps=1e-3, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=CONTEXT,
                                         layer_norm_epsilon=1e-3, bos_token_id=None, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(config)
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llama_like))
    else:
        config = transformers.LlamaConfig(**llama_like, tie_word_embeddings=kind == "llama-tied")
        model = transformers.LlamaForCausalLM(config)
    return scramble(model)


def tokens(batch=2, length=40, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours, theirs, idx):
    with torch.no_grad():
        expected = theirs(idx).logits
        got, _ = ours(idx)
    assert expected.abs().max() > 3  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each reference model, saved once by transformers (the untied llama in shards of ~20 KB)."""
    out = {}
    for kind in ("gpt2", "llama", "llama-tied", "qwen2"):
        model = reference_model(kind)
        directory = tmp_path_factory.mktemp(kind)
        model.save_pretrained(directory, max_shard_size="20KB" if kind == "llama" else "1GB")
        out[kind] = (model, directory)
    return out


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-tied", "qwen2"])
def test_logits_match_transformers(saved, kind):
    reference, directory = saved[kind]
    ours = from_pretrained(directory).eval()
    assert ours.config.tie_embeddings == (kind in ("gpt2", "llama-tied"))
    if kind == "llama":
        assert (directory / "model.safetensors.index.json").is_file()
        assert ours.config.n_kv_head == 2 and ours.config.rope_theta == 500.0
    if kind == "qwen2":
        assert ours.config.qkv_bias and ours.blocks[0].attn.qkv_proj.bias.abs().sum() > 0
    assert_same_logits(ours, reference, tokens())


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_greedy_generation_matches_transformers(saved, kind):
    from sample import generate  # here: the one test that needs the sampler

    reference, directory = saved[kind]
    ours = from_pretrained(directory).eval()
    prompt = tokens(1, 8, seed=1)
    with torch.no_grad():
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                                      do_sample=False, eos_token_id=None, pad_token_id=0)[0, 8:]
    got = generate(ours, prompt.tolist(), max_new_tokens=32, temperature=0)
    assert got.tokens[0].tolist() == expected.tolist()
    assert len(set(expected.tolist())) > 3  # not one token repeated: the continuation carries information


def test_rope_theta_in_either_config_form(saved, tmp_path):
    """transformers >= 5 writes rope_parameters; older configs (most files on the Hub) have rope_theta."""
    reference, directory = saved["llama-tied"]
    config = json.loads((directory / "config.json").read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))
    assert theta == 500.0
    config.pop("rope_parameters", None)
    config.update(rope_theta=500.0, rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    assert_same_logits(from_pretrained(tmp_path).eval(), reference, tokens())


def test_old_gpt2_layout_without_prefix_and_with_mask_buffers(saved, tmp_path):
    reference, directory = saved["gpt2"]
    tensors = {name.removeprefix("transformer."): t for name, t in load_file(directory / "model.safetensors").items()}
    for i in range(2):  # the causal-mask buffers older transformers versions saved
        tensors[f"h.{i}.attn.bias"] = torch.ones(1, 1, CONTEXT, CONTEXT).tril()
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()  # some files store the tied head anyway
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    assert_same_logits(from_pretrained(tmp_path).eval(), reference, tokens())


@pytest.mark.parametrize("config", [
    ModelConfig(family="llama", vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                rope_theta=2000.0, tie_embeddings=False),
    ModelConfig(family="llama", vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=4, n_kv_head=1, n_embd=64,
                qkv_bias=True),
    ModelConfig(family="llama", vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=2, n_embd=64, head_dim=16,
                bias=True),
    ModelConfig(family="gpt2", vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=4, n_embd=64, bias=True),
], ids=["llama-gqa-untied", "qwen2-style", "llama-biases-head_dim", "gpt2"])
def test_save_pretrained_opens_in_transformers(config, tmp_path):
    torch.manual_seed(0)
    ours = scramble(GPT(config), seed=1)
    save_pretrained(ours, tmp_path, max_shard_size=40_000)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    expected_class = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
    assert type(theirs).__name__ == expected_class[hf_config(config)["model_type"]]
    with torch.no_grad():
        expected, _ = ours(tokens())
    assert expected.abs().max() > 3
    torch.testing.assert_close(theirs(tokens()).logits, expected, atol=1e-5, rtol=0)
    assert from_pretrained(tmp_path).config == config  # and it reads back as the same model


def test_save_pretrained_keeps_the_original_config_and_tokenizer(saved, tmp_path):
    directory = shutil.copytree(saved["qwen2"][1], tmp_path / "original")
    original = json.loads((directory / "config.json").read_text())
    original["eos_token_id"] = 7
    (directory / "config.json").write_text(json.dumps(original))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    save_pretrained(from_pretrained(directory), tmp_path / "out", source=directory)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["eos_token_id"] == 7 and written["architectures"] == ["Qwen2ForCausalLM"]
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == '{"eos_token": "<|im_end|>"}'


def test_bfloat16_files_and_models(saved, tmp_path):
    reference, directory = saved["llama-tied"]
    copy.deepcopy(reference).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    in_file = load_file(tmp_path / "bf16" / "model.safetensors")["model.embed_tokens.weight"]
    assert in_file.dtype == torch.bfloat16
    ours = from_pretrained(tmp_path / "bf16")  # float32 by default, holding the bfloat16 values exactly
    assert ours.wte.weight.dtype == torch.float32 and torch.equal(ours.wte.weight, in_file.float())
    ours = from_pretrained(directory, dtype=torch.bfloat16)
    assert ours.wte.weight.dtype == torch.bfloat16
    save_pretrained(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_file(tmp_path / "out" / "model.safetensors")["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_smollm2_style_config():
    """The fields of SmolLM2-135M's config.json (written by transformers 4.42, before rope_parameters)."""
    smollm2 = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 0,
               "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
               "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
               "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
               "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True,
               "torch_dtype": "bfloat16", "vocab_size": 49152}
    config = config_from_hf(smollm2, "config.json")
    assert config == ModelConfig(family="llama", vocab_size=49152, block_size=8192, n_layer=30, n_head=9,
                                 n_kv_head=3, n_embd=576, head_dim=64, intermediate_size=1536, rope_theta=1e5,
                                 norm_eps=1e-5, tie_embeddings=True)
    written = hf_config(config, base=smollm2)
    assert written["rope_theta"] == 1e5 and written["bos_token_id"] == 0 and written["rope_interleaved"] is False


@pytest.mark.parametrize("edit, message", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_parameters"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "'mistral'"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_unsupported_options_are_refused_by_name(saved, tmp_path, edit, message):
    _, directory = saved["llama-tied"]
    config = json.loads((directory / "config.json").read_text()) | edit
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    with pytest.raises(UserError, match=message):
        from_pretrained(tmp_path)


def test_qwen2_sliding_window_is_refused(saved, tmp_path):
    _, directory = saved["qwen2"]
    config = json.loads((directory / "config.json").read_text()) | {"use_sliding_window": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="use_sliding_window"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("change, message", [
    ("drop", "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("add", "unexpected tensor 'model.layers.2.mlp.up_proj.weight'"),
    ("reshape", r"'blocks.1.mlp.up_proj.weight' has shape \(96, 32\)"),
    ("reshape k",  # one of the three tensors our qkv_proj is made of
     r"'model.layers.1.self_attn.k_proj.weight' has shape \(16, 64\), the config expects \(32, 64\)"),
])
def test_missing_unexpected_or_misshaped_tensor_is_named(saved, tmp_path, change, message):
    _, directory = saved["llama-tied"]
    tensors = load_file(directory / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    if change == "drop":
        del tensors[name]
    elif change == "add":
        tensors[name.replace("1", "2")] = tensors[name].clone()
    elif change == "reshape":
        tensors[name] = tensors[name][:, :32].contiguous()
    else:
        k_name = "model.layers.1.self_attn.k_proj.weight"
        tensors[k_name] = tensors[k_name][:16].contiguous()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(UserError, match=message):
        from_pretrained(tmp_path)


def write_tokenizer(directory):
    """A byte-level BPE tokenizer.json from the tokenizers library, eos "<|im_end|>" (id 1)."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator(["12 apples and 3 pears cost $4 each."] * 5, trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))


def hf_directory(saved, kind, directory):
    """A complete Hugging Face directory: the saved reference model of `kind` and a tokenizer.json."""
    shutil.copytree(saved[kind][1], directory)
    write_tokenizer(directory)
    return directory


def test_convert_gives_a_nanoaft_directory_with_the_same_model_and_tokenizer(saved, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    reference, _ = saved["llama"]  # sharded, untied
    hf_dir = hf_directory(saved, "llama", tmp_path / "hf")
    out = convert(hf_dir, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "converted_from.json", "model.safetensors",
                                                      "tokenizer.tiktoken", "tokenizer_info.json"]
    model, enc = load_model(out).eval(), load_tokenizer(out)
    assert_same_logits(model, reference, tokens())
    theirs = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    text = "12 apples and 3 pears cost $4 each, 15 in all."
    assert enc.eot_token == 1 and enc.encode_ordinary(text) == theirs.encode(text).ids
    # once: a second call reads nothing and writes nothing; a changed source is converted again
    written = (out / "model.safetensors").stat().st_mtime_ns
    assert convert(hf_dir, out) == out and (out / "model.safetensors").stat().st_mtime_ns == written
    os.utime(hf_dir / "config.json", ns=(1, 1))
    convert(hf_dir, out)
    assert (out / "model.safetensors").stat().st_mtime_ns != written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left


def test_convert_keeps_the_dtype_of_the_file(saved, tmp_path):
    reference, _ = saved["llama-tied"]
    hf_dir = tmp_path / "bf16"
    copy.deepcopy(reference).to(torch.bfloat16).save_pretrained(hf_dir)
    write_tokenizer(hf_dir)
    out = convert(hf_dir, tmp_path / "converted")
    stored = load_file(out / "model.safetensors")["wte.weight"]
    assert stored.dtype == torch.bfloat16
    assert torch.equal(stored, load_file(hf_dir / "model.safetensors")["model.embed_tokens.weight"])


def test_convert_refuses_what_it_cannot_honour(saved, tmp_path):
    hf_dir = hf_directory(saved, "qwen2", tmp_path / "hf")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="busy: exists and is not a conversion"):
        convert(hf_dir, tmp_path / "busy")
    out = convert(hf_dir, tmp_path / "converted")
    with pytest.raises(UserError, match="already a nanoAFT model directory"):
        convert(out, tmp_path / "again")
    (hf_dir / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer files"):
        convert(hf_dir, tmp_path / "other")
    save_ranks({bytes([b]): b for b in range(256)} | {bytes([1, b]): 256 + b for b in range(60)},
               str(hf_dir / "gpt2.tiktoken"))
    with pytest.raises(UserError, match="the tokenizer has 317 tokens but the model only 300 embeddings"):
        convert(hf_dir, tmp_path / "other")


def test_gpt2_rank_file_layout_converts_as_gpt2(tmp_path):
    """A GPT-2 model directory holding the real gpt2.tiktoken: GPT-2's pattern and <|endoftext|> = 50256."""
    spec = importlib.util.find_spec("whisper")  # located without importing it (it needs numba)
    rank_file = spec and Path(spec.origin).parent / "assets" / "gpt2.tiktoken"
    if not rank_file or not rank_file.is_file():
        pytest.skip("openai-whisper (the source of gpt2.tiktoken) is not installed")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50257, n_positions=CONTEXT)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "gpt2.tiktoken").symlink_to(rank_file)
    enc = load_tokenizer(convert(tmp_path / "gpt2", tmp_path / "converted"))
    assert enc.eot_token == 50256 and enc.encode_ordinary("hello world 12345") == [31373, 995, 17031, 2231]


def test_save_pretrained_with_our_tokenizer_opens_in_transformers(saved, tmp_path):
    """Export without the original directory: the tokenizer goes out as tokenizer.json, and transformers reads
    model and tokenizer back to the same logits and ids; our converter reads it back too. (A LLaMA: for
    model_type qwen2, transformers 5 replaces the file's pre-tokenizer by Qwen2's own, see save_pretrained.)"""
    out = convert(hf_directory(saved, "llama", tmp_path / "hf"), tmp_path / "converted")
    model, enc = load_model(out).eval(), load_tokenizer(out)
    save_pretrained(model, tmp_path / "exported", enc=enc)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    text = "12 apples and 3 pears cost $4 each."
    ids = their_tokenizer(text)["input_ids"]
    assert ids == enc.encode_ordinary(text) and their_tokenizer.eos_token_id == enc.eot_token == 1
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["eos_token_id"] == 1
    assert_same_logits(model, theirs, tokens())
    again = load_tokenizer(convert(tmp_path / "exported", tmp_path / "again"))
    assert again._mergeable_ranks == enc._mergeable_ranks and again.encode_ordinary(text) == ids


def test_export_command_line(saved, tmp_path):
    """python hf.py --ckpt=... --out=...: through the one loader, checkpoint.load_model_and_tokenizer."""
    import checkpoint

    if not hasattr(checkpoint, "load_model_and_tokenizer"):
        pytest.skip("checkpoint.load_model_and_tokenizer (the loader door) is not in this tree yet")
    reference, _ = saved["qwen2"]
    out = convert(hf_directory(saved, "qwen2", tmp_path / "hf"), tmp_path / "converted")
    export(ExportConfig(ckpt=str(out), out=str(tmp_path / "exported"), source=str(tmp_path / "hf")))
    assert (tmp_path / "exported" / "tokenizer.json").read_text() == (tmp_path / "hf" / "tokenizer.json").read_text()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
    assert_same_logits(load_model(out).eval(), theirs, tokens())
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens()).logits, reference(tokens()).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, content, message", [
    ("config.json", "[]", "config.json: expected a JSON object"),
    ("config.json", '{"model_type": "llama"', "config.json: invalid JSON"),
    ("config.json", {"vocab_size": "300"}, "vocab_size='300', expected a positive int"),
    ("config.json", {"num_attention_heads": 0}, "num_attention_heads=0, expected a positive int"),
    ("config.json", {"rms_norm_eps": float("nan")}, "rms_norm_eps=nan, expected a positive float"),
    ("config.json", {"tie_word_embeddings": "yes"}, "tie_word_embeddings='yes', expected true or false"),
    ("config.json", {"rope_parameters": "x"}, "rope_parameters='x', expected an object"),
    ("model.safetensors", b"", "model.safetensors: unreadable safetensors file"),
    ("model.safetensors", "half", "model.safetensors: unreadable safetensors file"),
    ("model.safetensors", "nan", "tensor 'blocks.0.mlp.up_proj.weight' holds NaN"),
])
def test_broken_hf_files_are_one_line_naming_them(saved, tmp_path, name, content, message):
    hf_dir = hf_directory(saved, "llama-tied", tmp_path / "hf")
    path = hf_dir / name
    if isinstance(content, dict):
        content = json.dumps(json.loads(path.read_text()) | content)
    elif content == "half":
        content = path.read_bytes()[: path.stat().st_size // 2]
    elif content == "nan":
        tensors = load_file(path)
        tensors["model.layers.0.mlp.up_proj.weight"][3, 4] = float("nan")
        save_file(tensors, path, metadata={"format": "pt"})
        content = path.read_bytes()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message) as error:
        convert(hf_dir, tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    ({"ckpt": ""}, "--ckpt is empty"),
    ({"out": ""}, "--out is empty"),
    ({"out": "{tmp}/a_file/sub"}, "a_file is a regular file, not a directory"),
    ({"out": "/proc/nanoaft_export"}, "--out=/proc/nanoaft_export: cannot write"),
    ({"out": "{model}"}, "holds a nanoAFT model"),  # exporting over the model itself would ruin its config.json
    ({"max_shard_size": -1}, "--max_shard_size=-1: must be at least 0"),
    ({"source": "{tmp}/no_such_hf"}, "--source=.*no_such_hf: no such directory"),
])
def test_export_refuses_bad_flags_before_reading_the_model(tmp_path, settings, message):
    model_dir = tmp_path / "model"
    save_model(GPT(ModelConfig(vocab_size=VOCAB, block_size=CONTEXT, n_layer=1, n_head=2, n_embd=16)), model_dir)
    (tmp_path / "a_file").write_text("x")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    args = {"ckpt": str(model_dir), "out": str(tmp_path / "exported"),
            **{k: v.format(tmp=tmp_path, model=model_dir) if isinstance(v, str) else v for k, v in settings.items()}}
    with pytest.raises(UserError, match=message) as error:
        export(ExportConfig(**args))
    assert "\n" not in str(error.value) and sorted(str(p) for p in tmp_path.rglob("*")) == before
