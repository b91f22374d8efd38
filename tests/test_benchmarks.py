"""benchmarks/: each script runs at a tiny size and reports what it claims to. The comparisons with transformers
are fair (identical losses, exactly the requested tokens generated), the MFU FLOP count matches one worked by
hand, and peak_memory.py measures a real train_align.py run. No speed or ratio is ever asserted."""

import math
import shlex

import pytest
import torch
import torch.nn.functional as F

from benchmarks import bench_mfu, bench_sampling, bench_train, bench_workers, peak_memory
from configurator import UserError
from model import GPT, ModelConfig
from test_train_sft import tiny_config
from train_sft import train as train_sft


def test_our_benchmark_loss_is_next_token_cross_entropy_over_all_scored_positions():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=16))
    idx = torch.randint(0, 50, (3, 10))  # (B, T)
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)  # as bench_train.run builds them
    logits, _ = model(idx)  # (B, T, V)
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())  # the T - 1 known next tokens
    assert bench_train.ours_loss(model, idx, targets).item() == pytest.approx(expected.item(), abs=1e-6)


def test_train_benchmark_compares_identical_models():
    pytest.importorskip("transformers")
    cfg = bench_train.Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, batch_size=2, seq_len=16, warmup=1,
                             steps=1, repeats=1, device="cpu")
    result = bench_train.run(cfg)
    assert result["loss_ours"] == pytest.approx(result["loss_transformers"], abs=1e-5)
    assert abs(result["loss_ours"] - math.log(64)) < 0.2  # small random weights: near the uniform loss
    assert result["ours"] > 0 and result["transformers"] > 0
    assert result["ratio"] == pytest.approx(result["ours"] / result["transformers"])


def test_workers_benchmark_times_the_same_work_both_ways():
    cfg = bench_workers.Config(n_layer=1, n_embd=16, vocab_size=32, batch_size=2, seq_len=9, steps=2, prompts=3,
                               prompt_len=4, new_tokens=5, repeats=1)
    result = bench_workers.run(cfg)
    assert result["train"]["tokens"] == (2 * 2 * 2 * 8,) * 2  # 2 jobs x 2 steps x 2 rows x 8 predicted tokens
    assert result["decode"]["tokens"] == (2 * 3 * 5,) * 2  # 2 jobs x 3 prompts x 5 tokens: no row ends early
    for kind in ("train", "decode"):
        r = result[kind]
        assert r["one"] > 0 and r["two"] > 0 and r["ratio"] == pytest.approx(r["one"] / r["two"])


def test_sampling_benchmark_generates_exactly_the_requested_tokens():
    pytest.importorskip("transformers")
    result = bench_sampling.run(bench_sampling.Config(num_samples=3, new_tokens=5, prompt_tokens=4, repeats=1,
                                                      device="cpu"))
    assert result["new_tokens"] == {"with KV cache": 15, "without KV cache": 15, "transformers": 15}
    assert min(result["cached"], result["uncached"], result["transformers"]) > 0
    assert result["ratio_transformers"] == pytest.approx(result["cached"] / result["transformers"])


def test_sampling_benchmark_can_leave_out_the_uncached_run():
    # 64 rows, a candidate-sized batch: still exactly 64 x 3 tokens
    result = bench_sampling.run(bench_sampling.Config(num_samples=64, new_tokens=3, prompt_tokens=4, repeats=1,
                                                      device="cpu", uncached=False))
    assert "without KV cache" not in result["new_tokens"] and "ratio" not in result
    assert result["new_tokens"]["with KV cache"] == 192


def test_sampling_benchmark_without_transformers_still_compares_the_cache(monkeypatch, capsys):
    find_spec = bench_sampling.importlib.util.find_spec
    monkeypatch.setattr(bench_sampling.importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else find_spec(name, *a))
    result = bench_sampling.run(bench_sampling.Config(num_samples=2, new_tokens=3, prompt_tokens=4, repeats=1,
                                                      device="cpu"))
    assert "transformers" not in result and result["new_tokens"] == {"with KV cache": 6, "without KV cache": 6}
    assert "transformers is not installed" in capsys.readouterr().out


def test_mfu_flops_of_gpt2_124m_by_hand():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPT(ModelConfig(family="gpt2", vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                                bias=True))
    C, V, L, T = 768, 50304, 12, 1024
    layer = 2 * C + 4 * (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)  # ln1, attn, ln2, mlp
    n = L * layer + 2 * C + V * C  # blocks, final LayerNorm, tied head (the position table is not a matmul)
    assert n == 123_689_472
    assert bench_mfu.matmul_params(model) == n
    assert bench_mfu.flops_per_token(model, T) == 6 * n + 12 * L * C * T == 855_383_040


def test_mfu_counts_an_untied_head_once_and_not_the_lookup_table():
    model = GPT(ModelConfig(vocab_size=100, n_layer=1, n_head=2, n_embd=16, block_size=8, tie_embeddings=False))
    # norm 16 + q,k,v,o 4 * 16 * 16 + norm 16 + SwiGLU 3 * 16 * 64 + final norm 16 + head 100 * 16
    assert bench_mfu.matmul_params(model) == 16 + 1024 + 16 + 3072 + 16 + 1600
    assert bench_mfu.flops_per_token(model, 8) == 6 * 5744 + 12 * 1 * 2 * 8 * 8


def test_mfu_on_cpu_reports_throughput_but_claims_no_mfu(capsys):
    cfg = bench_mfu.Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16, batch_size=2, warmup=1,
                           steps=1, repeats=1, device="cpu")
    result = bench_mfu.run(cfg)
    assert result["tokens_per_s"] > 0 and result["mfu"] is None and result["peak_memory_gib"] is None
    assert "MFU is a GPU figure: not measured on CPU" in capsys.readouterr().out


def test_peak_memory_measures_a_real_alignment_run(tmp_path):
    train_sft(tiny_config(tmp_path, out_dir=str(tmp_path / "vft"), max_steps=2, eval_every=0, save_every=2,
                          test_questions=0))
    args = (f"--vft={shlex.quote(str(tmp_path / 'vft'))} --n_questions=4 --k=2 --max_new_tokens=12 --batch_size=2 "
            f"--max_steps=2 --test_questions=0 --out_dir={shlex.quote(str(tmp_path / 'align'))}")
    result = peak_memory.run(peak_memory.Config(args=args))
    assert result["history"]["train"][-1]["step"] == 2  # the run really trained
    assert result["command"].startswith("python train_align.py --vft=")
    assert 50 < result["max_rss_mib"] < 100_000  # MiB (ru_maxrss counts KiB): torch alone is > 50
    with pytest.raises(UserError, match="unknown flag --max_step; did you mean --max_steps"):
        peak_memory.run(peak_memory.Config(args="--max_step=3"))
