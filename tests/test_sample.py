"""sample.py: cached and uncached decoding agree, top-k / top-p stay inside their sets, seeds reproduce,
fan-out equals separate prompts, generated log-probs equal teacher-forced ones, end-of-text stops a row, and
settings generate cannot use are refused with one line naming them."""

import pytest
import torch

import sample
from configurator import UserError
from losses import sequence_logprobs
from sample import draw, filter_logits, generate
from test_model import tiny


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 9, 3)]


@pytest.mark.parametrize("num_samples", [2, 22])  # 3 x 22 rows: a candidate-sized batch
@pytest.mark.parametrize("family", ["llama_gqa", "gpt2"])
def test_cache_and_no_cache_give_the_same_samples(family, num_samples):
    model = tiny(family)
    runs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        runs.append(generate(model, prompts(), 12, num_samples=num_samples, temperature=1.0, generator=g,
                             use_cache=use_cache))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert (runs[0].logprobs - runs[1].logprobs).abs().max().item() < 1e-5


def test_greedy_is_deterministic_and_seed_reproduces():
    model = tiny()
    a = generate(model, prompts(), 10, temperature=0)
    b = generate(model, prompts(), 10, temperature=0)
    assert torch.equal(a.tokens, b.tokens)
    draws = [generate(model, prompts(), 10, num_samples=3, generator=torch.Generator().manual_seed(s)).tokens
             for s in (3, 3, 4)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_fan_out_equals_sampling_each_prompt_alone():
    model = tiny()
    together = generate(model, prompts(), 8, num_samples=2, temperature=0)
    for i, p in enumerate(prompts()):
        alone = generate(model, [p], 8, num_samples=2, temperature=0)
        assert torch.equal(together.tokens[2 * i:2 * i + 2], alone.tokens)


def test_generated_logprobs_equal_teacher_forced_scores():
    model = tiny()
    p = prompts()[1]
    out = generate(model, [p], 10, num_samples=4, temperature=1.0, generator=torch.Generator().manual_seed(0))
    seq = torch.cat([torch.tensor(p).expand(4, -1), out.tokens], dim=1)  # (4, Tp + 10)
    logits, _ = model(seq[:, :-1])
    mask = torch.zeros_like(seq[:, 1:], dtype=torch.bool)
    mask[:, len(p) - 1:] = True
    total, count = sequence_logprobs(logits, seq[:, 1:], mask)
    assert (total - out.logprobs.sum(dim=1)).abs().max().item() < 1e-4
    assert torch.equal(count, torch.full((4,), 10.0))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_end_of_text_stops_each_row(temperature):
    model = tiny()

    def run(eot_id=None):  # the same seed: rows draw the same numbers whether or not an end-of-text stops them
        return generate(model, prompts(), 10, temperature=temperature, eot_id=eot_id,
                        generator=torch.Generator().manual_seed(5))

    free = run()  # never stopped
    eot = free.tokens[0, 2].item()  # call the third token of row 0 "end-of-text"
    out = run(eot)
    for row in range(3):
        seen = (free.tokens[row] == eot).nonzero()
        length = seen[0].item() + 1 if len(seen) else 10
        assert out.lengths[row] == length and bool(out.finished[row]) == bool(len(seen))
        assert torch.equal(out.tokens[row, :length], free.tokens[row, :length])
        assert (out.tokens[row, length:] == eot).all() and (out.logprobs[row, length:] == 0).all()
    assert out.lengths[0] <= 3 and out.finished[0]


def test_top_k_and_top_p_never_leave_their_set():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False, False, False]]
    probs = logits.softmax(-1)[0]  # 0.55, 0.20, 0.12, 0.07, 0.03, 0.003
    nucleus = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert probs[:2].sum() >= 0.7 > probs[:1].sum()
    assert nucleus.tolist() == [[True, True, False, False, False, False]]

    model = tiny()
    g = torch.Generator().manual_seed(0)
    p = prompts()[0]
    last = model(torch.tensor([p]))[0][0, -1]
    allowed_k = set(torch.topk(last, 3).indices.tolist())
    out = generate(model, [p], 1, num_samples=200, temperature=1.5, top_k=3, generator=g)
    assert set(out.tokens[:, 0].tolist()) <= allowed_k
    order = last.softmax(-1).argsort(descending=True)
    cum = last.softmax(-1)[order].cumsum(0)
    allowed_p = set(order[: int((cum < 0.5).sum()) + 1].tolist())
    out = generate(model, [p], 1, num_samples=200, temperature=1.0, top_p=0.5, generator=g)
    assert set(out.tokens[:, 0].tolist()) <= allowed_p


def test_draw_follows_the_distribution_and_never_draws_a_zero_probability_token(monkeypatch):
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.3, 0.0]]).repeat(20000, 1) * 3.0  # unnormalised rows are fine
    ids = draw(probs, torch.Generator().manual_seed(0))
    share = torch.bincount(ids, minlength=5) / len(ids)
    assert share[0] == 0 and share[4] == 0
    # standard error sqrt(p(1-p)/n) <= 0.0036: 0.015 is more than 4 of them
    assert share[1:4].tolist() == pytest.approx([0.5, 0.2, 0.3], abs=0.015)
    # at the largest uniform number torch.rand returns the draw still lands on the last token with probability,
    # not past it onto a zero one
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1 - 2**-24, dtype=kw.get("dtype")))
    assert draw(torch.tensor([[0.25, 0.25, 0.5, 0.0]])).tolist() == [2]
    assert draw(torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])).tolist() == [2]


@pytest.mark.parametrize("settings, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1, got 0"),
    (dict(num_samples=0), "num_samples must be an int >= 1, got 0"),
    (dict(num_samples=2.0), "num_samples must be an int"),
    (dict(temperature=-0.5), "temperature must be finite and >= 0, got -0.5"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(temperature=float("inf")), "temperature must be finite"),
    (dict(top_k=-1), "top_k must be an int >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(top_p=float("nan")), "top_p must be in"),
    (dict(prompts=[[1, 2], []]), "every prompt needs at least one token"),
    (dict(prompts=[]), "every prompt needs at least one token"),
    (dict(prompts=[[1, 2, 97]]), "token id 97 is outside the model's vocabulary of 97"),
    (dict(prompts=[[-1]]), "token id -1 is outside"),
    (dict(prompts=[list(range(60))], max_new_tokens=5), "a prompt of 60 tokens and max_new_tokens=5 do not fit the "
                                                        "model's context of 64 tokens"),
    (dict(prompts=[list(range(80))]), "a prompt of 80 tokens"),
])
def test_settings_generate_cannot_use_are_refused_by_name(settings, message):
    kwargs = dict(prompts=prompts(), max_new_tokens=4) | settings
    with pytest.raises(UserError, match=message):
        generate(tiny(), **kwargs)


def test_non_finite_weights_at_sampling_time_are_one_clear_error():
    model = tiny()
    with torch.no_grad():
        model.blocks[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="logits are NaN or inf"):
        generate(model, prompts(), 4)


@pytest.mark.parametrize("flags, message", [
    (dict(num_samples=0), "num_samples must be an int >= 1"),
    (dict(max_new_tokens=-3), "max_new_tokens must be"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(top_p=2.0), "top_p must be in"),
    (dict(top_k=-2), "top_k must be"),
    (dict(prompt=""), "exactly one of --prompt"),
    (dict(question="Why?"), "exactly one of --prompt"),
    (dict(ckpt=""), "--ckpt is empty"),
    (dict(device="gpu0"), "--device=gpu0: not a device name"),
])
def test_command_line_settings_are_checked_before_anything_is_loaded(monkeypatch, flags, message):
    def no_loading(*args):
        raise AssertionError("loaded a model before checking the settings")
    monkeypatch.setattr(sample, "load_model_and_tokenizer", no_loading)
    cfg = sample.Config(**(dict(prompt="Question: 1 + 1?") | flags))
    with pytest.raises(UserError, match=message):
        sample.run(cfg)
