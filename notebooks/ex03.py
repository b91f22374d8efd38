"""Checkers for the exercises of 03_losses_by_hand.ipynb: each compares the student's answer with losses.py (values
and autograd gradients), prints right, or wrong and why (course.check), and returns True or False."""

import torch

import course  # noqa: F401  (puts the repository on sys.path)
import losses

BETA = losses.BETA
# Exercise 3.1: one question, two right chains (label 1) and two wrong ones (label 0)
GROUP_SCORES = [-0.25, -0.40, -0.30, -0.55]
GROUP_LABELS = [1, 1, 0, 0]
# Exercise 3.3: two right chains, three wrong ones
SIGN_SCORES = [-0.20, -0.30, -0.10, -0.35, -0.60]
SIGN_LABELS = [1, 1, 0, 0, 0]


def _gradient(scores, labels, constraint):
    """d L / d s for one question under losses.alignment_loss. (K,)"""
    s = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(labels, dtype=torch.float64)
    losses.alignment_loss(s[None], labels[None], torch.ones(1, len(s), dtype=torch.bool), constraint)[0].backward()
    return s.grad


def check_boundary(B, T_p):
    """Exercise 3.1: the boundary B and the targets T_p (one per right chain, in order) of GROUP_SCORES."""
    if B is None or T_p is None:
        return course.check(False, "", "not filled in yet: give B as a number and T_p as a list of numbers")
    positives = [s for s, label in zip(GROUP_SCORES, GROUP_LABELS) if label == 1]
    want_B = min(positives) - BETA
    want_T = [2 * want_B - s for s in positives]
    close = lambda a, b: abs(float(a) - b) < 1e-3  # noqa: E731
    if not close(B, want_B):
        if close(B, min(positives)):
            return course.check(False, "", f"B = {B} is the worst right chain's score; the boundary lies beta = "
                                            f"{BETA} below it")
        if close(B, max(positives) - BETA):
            return course.check(False, "", f"B = {B} is beta below the BEST right chain; it is beta below the "
                                            "worst one (the min over G_P)")
        if close(B, min(positives) + BETA):
            return course.check(False, "", f"B = {B} lies above the worst right chain; subtract beta")
        return course.check(False, "", f"B = {B}; B = min over the right chains of s_p, minus beta")
    try:
        T_p = [float(t) for t in T_p]
    except TypeError:
        return course.check(False, "", "T_p must be a list: one target per right chain")
    if len(T_p) != len(want_T):
        return course.check(False, "", f"{len(T_p)} targets for {len(want_T)} right chains")
    if not all(close(t, w) for t, w in zip(T_p, want_T)):
        if all(close(t, 2 * want_B + s) for t, s in zip(T_p, positives)):
            return course.check(False, "", "T_p = 2B - s_p: you added s_p")
        return course.check(False, "", f"T_p = {T_p}; T_p = 2B - s_p is the mirror image of s_p in B")
    return course.check(True, f"B = {want_B:.2f} and T_p = {[round(t, 2) for t in want_T]}: each T_p is s_p "
                              "mirrored in B, so the pair's push and pull balance at s_n = (s_p + T_p) / 2 = B", "")


def check_l_bc(l_bc):
    """Exercise 3.2: l_bc(scores (K,), labels (K,), beta) -> L_BC of one question, a scalar, differentiable."""
    groups = [([-0.10, -0.16, -0.12, -0.30], [1, 1, 0, 0]), ([-0.5, -0.2, -0.9, -0.1, -0.3], [1, 1, 1, 0, 0]),
              ([-1.0, 0.5], [1, 0]), ([-0.3, -0.2, -0.4], [0, 1, 0])]
    for scores, labels in groups:
        s = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
        label_tensor = torch.tensor(labels, dtype=torch.float64)
        try:
            got = l_bc(s, label_tensor.clone(), BETA)
            got.backward()
        except NotImplementedError:
            return course.check(False, "", "not written yet: replace the `raise NotImplementedError` with your code")
        except Exception as e:  # a student's bug: name it, keep the notebook running
            return course.check(False, "", f"it raised {type(e).__name__}: {e}")
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            return course.check(False, "", "return one number (a 0-d tensor) for the question")
        ref = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
        want = losses.alignment_loss(ref[None], label_tensor[None], torch.ones(1, len(ref), dtype=torch.bool),
                                     "bc", BETA)[0]
        want.backward()
        if abs(got.item() - want.item()) > 1e-6:
            none = losses.alignment_loss(ref.detach()[None], label_tensor[None],
                                         torch.ones(1, len(ref), dtype=torch.bool), "none")[0]
            if abs(got.item() - none.item()) < 1e-6:
                return course.check(False, "", "your value is L_A's: add the boundary terms exp(T_p - s_n)")
            return course.check(False, "", f"for scores {scores}, labels {labels}: {got.item():.5f}, expected "
                                            f"{want.item():.5f} (the '1 +' inside the log? every (p, n) pair?)")
        if s.grad is None:
            return course.check(False, "", "no gradient reached the scores: compute with torch operations on them")
        if not torch.allclose(s.grad, ref.grad, atol=1e-6):
            return course.check(False, "", "the value is right but the gradient is not "
                                            f"({[round(g, 4) for g in s.grad.tolist()]}, expected "
                                            f"{[round(g, 4) for g in ref.grad.tolist()]}): "
                                            "B comes from sg(s_p), i.e. s.detach(); T_p's own s_p is not detached")
    return course.check(True, "value and gradient match losses.alignment_loss(..., constraint='bc')", "")


def check_signs(signs):
    """Exercise 3.3: signs = {"none": [...], "dc": [...], "bc": [...]}: "+", "-" or "0" per chain of SIGN_SCORES."""
    if not isinstance(signs, dict) or set(signs) != {"none", "dc", "bc"}:
        return course.check(False, "", 'not filled in yet: a dict {"none": [...], "dc": [...], "bc": [...]}, five '
                                       'signs each')
    for constraint in ("none", "dc", "bc"):
        grad = _gradient(SIGN_SCORES, SIGN_LABELS, constraint)
        want = ["0" if abs(g) < 1e-6 else "+" if g > 0 else "-" for g in grad.tolist()]
        got = [str(x).strip() for x in signs[constraint]]
        if len(got) != len(want):
            return course.check(False, "", f"{constraint}: {len(got)} signs for {len(want)} chains")
        for i, (a, b) in enumerate(zip(got, want)):
            if a == b:
                continue
            kind = "right" if SIGN_LABELS[i] else "wrong"
            why = {("none", "wrong"): "L_A pushes every wrong chain down: its gradient is positive at every s_n",
                   ("dc", "wrong"): "DC detaches the wrong chains' scores: they get no gradient at all",
                   ("bc", "wrong"): f"BC's gradient on a wrong chain is + above B = {min(SIGN_SCORES[:2]) - BETA:.2f}, "
                                    "0 exactly at B, - below it",
                   }.get((constraint, kind), "a right chain is always pulled up: its gradient is negative")
            return course.check(False, "", f"{constraint}, chain {i + 1} (a {kind} chain at s = {SIGN_SCORES[i]}): "
                                            f"the gradient's sign is {b}, not {a}. {why}")
    return course.check(True, "right chains always '-', wrong ones: none '+', dc '0', bc '+' above B, '0' at B, "
                              "'-' below", "")
