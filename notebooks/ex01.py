"""Checkers for the exercises of 01_model_and_sampling.ipynb: each takes the student's function, compares it with
sample.py on inputs of its own, prints right, or wrong and why (course.check), and returns True or False."""

import torch

import course  # noqa: F401  (puts the repository on sys.path)
from sample import filter_logits


def _logits(rows=4, vocab=12, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2  # (N, V), no ties


def _call(fn, *args):
    """(output, None), or (None, why it could not be used)."""
    try:
        out = fn(*args)
    except NotImplementedError:
        return None, "not written yet: replace the `raise NotImplementedError` with your code"
    except Exception as e:  # a student's bug: say which, do not stop the notebook
        return None, f"it raised {type(e).__name__}: {e}"
    if not isinstance(out, torch.Tensor):
        return None, f"it returned {type(out).__name__}, not a tensor"
    return out, None


def check_temperature(softmax_with_temperature):
    """Exercise 1: softmax_with_temperature(logits (N, V), temperature) -> probabilities (N, V)."""
    logits = _logits()
    for tau in (0.3, 1.0, 2.5):
        want = filter_logits(logits, temperature=tau).softmax(dim=-1)
        got, why = _call(softmax_with_temperature, logits.clone(), tau)
        if why:
            return course.check(False, "", why)
        if got.shape != want.shape:
            return course.check(False, "", f"shape {tuple(got.shape)}, expected {tuple(want.shape)} (one "
                                            "distribution per row: softmax over the last dimension)")
        if torch.allclose(got, want, atol=1e-6):
            continue
        if not torch.allclose(got.sum(dim=-1), torch.ones(len(got)), atol=1e-5):
            return course.check(False, "", f"at temperature {tau} the rows sum to {got.sum(dim=-1).tolist()}, "
                                            "not 1: did you return the scaled logits instead of their softmax?")
        if torch.allclose(got, (logits * tau).softmax(dim=-1), atol=1e-6):
            return course.check(False, "", "you multiplied the logits by the temperature; divide them: a high "
                                            "temperature must flatten the distribution")
        if torch.allclose(got, logits.softmax(dim=-1), atol=1e-6):
            return course.check(False, "", f"at temperature {tau} you return the plain softmax: the temperature "
                                            "has no effect")
        return course.check(False, "", f"at temperature {tau} the probabilities differ from "
                                        f"softmax(logits / {tau}) by up to {(got - want).abs().max():.3g}")
    return course.check(True, "softmax(z / tau): below 1 it sharpens the distribution, above 1 it flattens it",
                        "")


def check_top_k(keep_top_k):
    """Exercise 2: keep_top_k(logits (N, V), k) -> logits with all but the k largest of each row set to -inf."""
    logits = _logits(seed=1)
    for k in (1, 3, 12):
        want = filter_logits(logits, top_k=k)
        got, why = _call(keep_top_k, logits.clone(), k)
        if why:
            return course.check(False, "", why)
        if got.shape != want.shape:
            return course.check(False, "", f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if torch.equal(got, want):
            continue
        kept = torch.isfinite(got).sum(dim=-1)
        if torch.allclose(got.sum(dim=-1), torch.ones(len(got)), atol=1e-5):
            return course.check(False, "", "you returned probabilities; return the filtered logits (-inf for the "
                                            "dropped tokens) and let the sampler take the softmax")
        if not (got == float("-inf")).any() and k < logits.shape[-1]:
            return course.check(False, "", "no logit is -inf: a dropped token needs the logit -inf (probability "
                                            "exactly 0), not 0, which still has probability e^0 / Z")
        if (kept != k).any():
            return course.check(False, "", f"with k={k} you kept {kept.tolist()} tokens per row (off by one? "
                                            "keep the logits >= the k-th largest)")
        return course.check(False, "", f"with k={k} you kept the wrong tokens or changed the kept logits' values")
    return course.check(True, "everything below the k-th largest logit becomes -inf, the rest is untouched", "")


def check_draw(inverse_cdf_draw):
    """Exercise 3: inverse_cdf_draw(probs (N, V), u (N,) in [0, 1)) -> index (N,): the first i with F_i > u * F_V."""
    probs = torch.tensor([[0.25, 0.0, 0.25, 0.5]] * 5 + [[0.1, 0.2, 0.3, 0.4]] * 3 + [[0.0, 0.5, 0.5, 0.0]])  # (9, 4)
    u = torch.tensor([0.0, 0.25, 0.5, 0.625, 0.999, 0.0625, 0.375, 0.9375, 0.0])  # (9,) three on a step of F
    want = torch.searchsorted(probs.cumsum(dim=-1), (u * probs.sum(dim=-1))[:, None], right=True).squeeze(-1)
    got, why = _call(inverse_cdf_draw, probs.clone(), u.clone())
    if why:
        return course.check(False, "", why)
    got = got.reshape(-1).long() if got.numel() == len(u) else got
    if got.shape != want.shape:
        return course.check(False, "", f"shape {tuple(got.shape)}, expected {tuple(want.shape)}: one index per row")
    if torch.equal(got, want):
        return course.check(True, "the first index whose cumulative probability exceeds u: a token with "
                                  "probability 0 adds no step to F and is never drawn", "")
    on_step = (probs.cumsum(dim=-1) == (u * probs.sum(dim=-1))[:, None]).any(dim=-1)  # (9,) u equals some F_i
    if torch.equal(got[~on_step], want[~on_step]):
        return course.check(False, "", "right except where u lies exactly on a step of F (u = F_i): take the "
                                        "first i with F_i > u, not F_i >= u; otherwise u = 0 draws a first token "
                                        "of probability 0")
    return course.check(False, "", f"for u = {[round(x, 4) for x in u.tolist()]} you drew {got.tolist()}; the "
                                    f"inverse CDF gives {want.tolist()}")
