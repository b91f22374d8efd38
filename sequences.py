"""
How a (question, chain of thought) pair becomes model input, and how a batch of pairs is scored.

A pair is two token lists: the prompt (`format_prompt(question)`, never scored) and the completion (the COT text
followed by the end-of-text token, every token of which is scored). A tokenizer with a begin-of-sequence token
(Llama-3's <|begin_of_text|>) gets it in front of the prompt, as the model saw in pretraining. `collate`
right-pads pairs into (idx, targets, mask); `score_pairs` turns them into the paper's sum log-likelihood S(c)
and token count |c| with the project's one float32 log-prob helper, `losses.sequence_logprobs`. Training,
candidate scoring and evaluation all go through here (docs/method.md section 2).

A pair `fits` a model when prompt and completion together are at most block_size tokens, the bound generation
has too; pairs that do not fit are left out where they occur, with a count printed.
"""

import torch

from data.dataset import format_prompt
from losses import sequence_logprobs

# Logits one scoring forward may hold (rows x positions x vocabulary), float32 copies for the log-probs
# included: a 50k-150k vocabulary needs this bound, our 1k one never reaches it.
MAX_LOGITS = 2**28


def encode_prompt(enc, text):
    """Ids of a prompt: the begin-of-sequence token if the tokenizer has one, then the text. encode_ordinary,
    so a stray "<|endoftext|>" inside the data can never become a special token."""
    bos = getattr(enc, "bos_token_id", None)
    return ([] if bos is None else [bos]) + enc.encode_ordinary(text)


def encode_pair(enc, question, completion_text):
    """(prompt ids, completion ids); the end-of-text token is appended to the completion."""
    return encode_prompt(enc, format_prompt(question)), enc.encode_ordinary(completion_text) + [enc.eot_token]


def fits(pair, block_size):
    """Whether a (prompt ids, completion ids) pair fits in a context of block_size tokens."""
    return len(pair[0]) + len(pair[1]) <= block_size


def collate(pairs, pad_id, device="cpu"):
    """pairs: list of (prompt ids, completion ids). Returns idx (N, T), targets (N, T), mask (N, T) where
    targets[t] is the token after idx[t] and mask is True exactly on the completion's tokens."""
    T = max(len(p) + len(c) for p, c in pairs) - 1
    idx = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (N, T)
    targets = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros(len(pairs), T, dtype=torch.bool)  # (N, T)
    for row, (prompt, completion) in enumerate(pairs):
        seq = torch.tensor(prompt + completion)
        n = len(seq) - 1
        idx[row, :n] = seq[:-1]
        targets[row, :n] = seq[1:]
        mask[row, len(prompt) - 1:n] = True  # the prediction made at the prompt's last token is the first scored
    return idx.to(device), targets.to(device), mask.to(device)


def score_pairs(model, pairs, pad_id, batch_size=64, max_logits=MAX_LOGITS):
    """Sum log-prob S (N,) and token count |c| (N,) of each completion given its prompt, float32.
    One forward per batch of at most batch_size pairs whose logits (rows x longest x vocabulary) stay within
    max_logits. Gradients flow when called with grad enabled; wrap in torch.no_grad() to only score."""
    device = next(model.parameters()).device
    totals, counts, start = [], [], 0
    while start < len(pairs):
        end, longest = start + 1, len(pairs[start][0]) + len(pairs[start][1])
        while end < len(pairs) and end - start < batch_size:
            longer = max(longest, len(pairs[end][0]) + len(pairs[end][1]))
            if (end + 1 - start) * longer * model.config.vocab_size > max_logits:
                break
            end, longest = end + 1, longer
        idx, targets, mask = collate(pairs[start:end], pad_id, device)
        start = end
        logits, _ = model(idx)  # (b, T, V)
        total, count = sequence_logprobs(logits, targets, mask)  # (b,), (b,)
        totals.append(total)
        counts.append(count)
    return torch.cat(totals), torch.cat(counts)
