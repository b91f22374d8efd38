"""sample.py: cached and uncached decoding agree, top-k / top-p stay inside their sets, seeds reproduce,
fan-out equals separate prompts, generated log-probs equal teacher-forced ones, end-of-text stops a row."""

import pytest
import torch

from losses import sequence_logprobs
from sample import draw, filter_logits, generate
from test_model import tiny


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 9, 3)]


@pytest.mark.parametrize("num_samples", [2, 22])  # 3 x 22 rows: the cache shares the prompts (KVCache.fan_out)
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


def test_share_prompt_forces_or_forbids_sharing_with_the_same_samples(monkeypatch):
    import model as model_module

    calls = []
    shared = model_module.shared_prompt_attention
    monkeypatch.setattr(model_module, "shared_prompt_attention", lambda *a: calls.append(1) or shared(*a))
    model = tiny("llama_gqa")
    runs = {}
    for share in (True, False, None):  # 3 prompts x 2 rows: below KVCache.SHARE_FROM_ROWS
        calls.clear()
        runs[share] = generate(model, prompts(), 6, num_samples=2, temperature=1.0, share_prompt=share,
                               generator=torch.Generator().manual_seed(3))
        assert bool(calls) == (share is True)
    assert torch.equal(runs[True].tokens, runs[False].tokens) and torch.equal(runs[False].tokens, runs[None].tokens)


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
