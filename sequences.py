"""
How a (question, chain of thought) pair becomes model input, how a batch of them is scored, and where and in
which precision the model runs.

A pair is two token lists: the prompt (`format_prompt(question)`, never scored) and the completion (the
COT text followed by the end-of-text token, every token of which is scored). A tokenizer that puts a
begin-of-sequence token in front of every text (Llama-3's <|begin_of_text|>, `enc.bos_token_id`) gets it in
front of the prompt, as the model saw in pretraining; ours, GPT-2's, Qwen2's and SmolLM's have none.
`collate` right-pads pairs into (idx, targets, mask); `score_pairs` runs ONE batched forward per batch and
turns the logits into the paper's sum log-likelihood S(c) and token count |c| with the project's single
float32 log-prob helper, `losses.sequence_logprobs`. Training, candidate scoring and evaluation all go
through here.

A pair `fits` a model when prompt and completion together are at most block_size tokens, the same bound
generation has (prompt + new tokens). Pairs that do not fit are left out where they occur, with a count
printed: only a model with a short context (a tiny test model) has any on GSM8K.

Precision (`--dtype`): "float32", or "bfloat16" = autocast. Weights, gradients and AdamW's state stay float32;
matmuls and attention run in bf16; log-probs and losses are float32 (`sequence_logprobs` upcasts the logits).
On CUDA that is the usual mixed precision. On CPU it is allowed too (CPU autocast): it computes the same
thing, usually slower than float32, and lets the bf16 path be tested without a GPU.
"""

import contextlib

import torch

from configurator import UserError
from data.dataset import format_prompt
from losses import sequence_logprobs

DTYPES = ("float32", "bfloat16")
# Logits one scoring forward may hold (rows x positions x vocabulary): with their float32 copies for the log-probs,
# about 2.7 GB. A 50k-150k vocabulary (SmolLM2, Qwen2.5) then scores ~2-5k tokens per forward; our 1k one and the
# built-in task's short chains never reach it, so there the batches are simply batch_size pairs.
MAX_LOGITS = 2**28


def encode_prompt(enc, text):
    """Ids of a prompt text: the tokenizer's begin-of-sequence token if it has one, then the text. The text goes
    through encode_ordinary, so a stray "<|endoftext|>" inside the data can never become a special token."""
    bos = getattr(enc, "bos_token_id", None)  # hf_tokenizer.Tokenizer has it; a plain tiktoken Encoding does not
    return ([] if bos is None else [bos]) + enc.encode_ordinary(text)


def encode_pair(enc, question, completion_text):
    """(prompt ids, completion ids); the real end-of-text token is appended to the completion."""
    return encode_prompt(enc, format_prompt(question)), enc.encode_ordinary(completion_text) + [enc.eot_token]


def fits(pair, block_size):
    """Whether a (prompt ids, completion ids) pair fits in a model's context of block_size tokens."""
    prompt, completion = pair
    return len(prompt) + len(completion) <= block_size


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


def score_pairs(model, pairs, pad_id, batch_size=64, max_logits=MAX_LOGITS):
    """Sum log-prob S (N,) and token count |c| (N,) of each completion given its prompt, float32.
    One forward per batch of at most batch_size pairs whose logits (rows x longest x vocabulary) stay within
    max_logits. Gradients flow when called with grad enabled (training); wrap in torch.no_grad() to only score."""
    device = next(model.parameters()).device
    totals, counts = [], []
    start = 0
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
        total, count = sequence_logprobs(logits, targets, mask)
        totals.append(total)
        counts.append(count)
    return torch.cat(totals), torch.cat(counts)


# -----------------------------------------------------------------------------
# where and in which precision

def pick_device(name):
    """"auto" -> cuda when there is a GPU, else cpu. On CUDA, float32 matmuls may use TF32 (10 mantissa bits,
    plenty for training these models, several times faster on Ampere and later)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # the one TF32 switch compatible with both of torch's APIs
    return device


def autocast(device, dtype):
    """The context every forward pass runs in for --dtype: nothing for float32, bf16 autocast for bfloat16."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype={dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
