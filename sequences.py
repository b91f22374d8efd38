"""
How a (question, chain of thought) pair becomes model input, and how a batch of them is scored.

A pair is two token lists: the prompt (`format_prompt(question)`, never scored) and the completion (the
COT text followed by the end-of-text token, every token of which is scored). `collate` right-pads pairs
into (idx, targets, mask); `score_pairs` runs ONE batched forward per batch and turns the logits into the
paper's sum log-likelihood S(c) and token count |c| with the project's single float32 log-prob helper,
`losses.sequence_logprobs`. Training, candidate scoring and evaluation all go through here.
"""

import torch

from data.dataset import format_prompt
from losses import sequence_logprobs


def encode_pair(enc, question, completion_text):
    """(prompt ids, completion ids). Dataset text goes through encode_ordinary, so a stray
    "<|endoftext|>" inside the data can never become the special token; the real one is appended."""
    return enc.encode_ordinary(format_prompt(question)), enc.encode_ordinary(completion_text) + [enc.eot_token]


def collate(pairs, pad_id, device="cpu"):
    """pairs: list of (prompt ids, completion ids). Returns idx (N, T), targets (N, T), mask (N, T) where
    targets[t] is the token after idx[t] and mask is True exactly on the completion's tokens."""
    T = max(len(p) + len(c) for p, c in pairs) - 1
    idx = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    targets = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(pairs), T, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(pairs):
        seq = torch.tensor(prompt + completion)
        n = len(seq) - 1
        idx[row, :n] = seq[:-1]
        targets[row, :n] = seq[1:]
        mask[row, len(prompt) - 1:n] = True  # the prediction made at the prompt's last token is the first scored
    return idx.to(device), targets.to(device), mask.to(device)


def score_pairs(model, pairs, pad_id, batch_size=64):
    """Sum log-prob S (N,) and token count |c| (N,) of each completion given its prompt, float32.
    Gradients flow when called with grad enabled (training); wrap in torch.no_grad() to only score."""
    device = next(model.parameters()).device
    totals, counts = [], []
    for start in range(0, len(pairs), batch_size):
        idx, targets, mask = collate(pairs[start:start + batch_size], pad_id, device)
        logits, _ = model(idx)  # (b, T, V)
        total, count = sequence_logprobs(logits, targets, mask)
        totals.append(total)
        counts.append(count)
    return torch.cat(totals), torch.cat(counts)
