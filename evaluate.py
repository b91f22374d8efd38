"""
The metrics of PAPER.md section 7, for a checkpoint and a split of questions.

- T-Acc: greedy-decoding accuracy (final answer exact match) [paper].
- maj@k: majority vote over k sampled answers; ties go to the answer reached first [paper metric; tie rule ours].
- rerank@k: the answer of the highest-scoring sample by s(c) (the model's own assessment put to use) [paper].
- A-Acc: over candidate groups, the fraction of (positive, negative) pairs with s_p > s_n; a tie counts half
  [paper metric; tie rule ours]. Here on the k samples drawn for each test question.
- gold PPL: exp(-sum_c S(c) / sum_c |c|) over the reference COTs, token-weighted [ours].
- degeneration rate: share of greedy outputs with a repetition loop or no final answer [ours].

    python evaluate.py --ckpt=out/vft                  # prints a table, writes out/vft/eval_test.json
    python evaluate.py --ckpt=path/to/SmolLM2-135M --dataset=gsm8k --data_dir=data/gsm8k --dtype=bfloat16

Generation never runs past the model's context: a batch whose longest prompt leaves fewer than max_new_tokens
positions generates fewer tokens (real models have thousands; only a tiny test model ever gets near).
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from configurator import UserError, main
from data.answers import extract_answer, is_correct, is_degenerate
from data.dataset import run_task
from hf import load_model_and_tokenizer, model_directory
from losses import mean_logprob
from sample import generate
from sequences import DTYPES, autocast, encode_pair, fits, pick_device, score_pairs


@dataclass
class Config:
    ckpt: str = "out/vft"           # run, checkpoint or model directory (nanoAFT or Hugging Face), with its tokenizer
    dataset: str = "synth"          # task, for a model without a train_sft.py config (else the run's own task)
    data_dir: str = ""              # gsm8k jsonl directory, likewise
    split: str = "test"             # "test" or "val"
    n_questions: int = 1000         # questions for greedy accuracy and gold PPL
    k: int = 8                      # samples per question for maj@k, rerank@k and test A-Acc
    k_questions: int = 200          # questions for the sampled metrics (0 = skip them)
    temperature: float = 0.8        # sampling temperature
    max_new_tokens: int = 160       # generation budget per answer
    batch_size: int = 128           # rows per generation batch
    seed: int = 0                   # sampling seed
    device: str = "auto"            # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": DTYPES})  # bfloat16: autocast (sequences.py)
    out: str = ""                   # JSON output path ("" = <ckpt>/eval_<split>.json)


def decode(enc, ids):
    """Text of generated ids, end-of-text dropped."""
    return enc.decode([t for t in ids if t != enc.eot_token], errors="replace")


def complete(model, enc, questions, max_new_tokens, num_samples=1, temperature=0.0, batch_size=128,
             generator=None):
    """Generated texts and their token ids: num_samples per question, prompt-major. A batch gets at most the
    positions its longest prompt leaves in the model's context."""
    per_batch = max(1, batch_size // num_samples)
    block_size = model.config.block_size
    texts, ids = [], []
    for start in range(0, len(questions), per_batch):
        prompts = [encode_pair(enc, q, "")[0] for q in questions[start:start + per_batch]]
        longest = max(map(len, prompts))
        if longest >= block_size:
            raise UserError(f"a question of {longest} tokens leaves no room for an answer in the model's "
                            f"block_size of {block_size} tokens")
        out = generate(model, prompts, min(max_new_tokens, block_size - longest), num_samples=num_samples,
                       temperature=temperature, eot_id=enc.eot_token, generator=generator, n_vocab=enc.n_vocab)
        for row in range(out.tokens.shape[0]):
            ids.append(out.row(row))
            texts.append(decode(enc, ids[-1]))
    return texts, ids


@torch.no_grad()
def greedy_accuracy(model, enc, examples, max_new_tokens=160, batch_size=128):
    """T-Acc and degeneration rate of greedy decoding on `examples` (dicts with question, answer)."""
    texts, _ = complete(model, enc, [ex["question"] for ex in examples], max_new_tokens, batch_size=batch_size)
    correct = [is_correct(text, ex["answer"]) for text, ex in zip(texts, examples)]
    return {"accuracy": sum(correct) / len(examples),
            "degeneration": sum(map(is_degenerate, texts)) / len(examples),
            "n": len(examples), "outputs": texts}


def assessment_accuracy(scores, labels, valid):
    """A-Acc: fraction of (positive, negative) pairs of the same group with s_p > s_n, a tie counting half.
    scores, labels (1 = correct), valid: (B, K). Returns (accuracy or None when there is no pair, pair count)."""
    pos = (labels > 0) & valid  # (B, K)
    neg = (labels <= 0) & valid
    pairs = pos[:, :, None] & neg[:, None, :]  # (B, Kp, Kn)
    diff = scores[:, :, None] - scores[:, None, :]  # (B, K, K) s_p - s_n
    wins = ((diff > 0).float() + 0.5 * (diff == 0).float())[pairs]
    n = int(pairs.sum())
    return (wins.sum().item() / n if n else None), n


def majority_vote(answers):
    """Most frequent non-missing answer; ties go to the one reached first; None when every answer is missing."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


@torch.no_grad()
def sampled_metrics(model, enc, examples, k, temperature, max_new_tokens, batch_size=128, seed=0):
    """maj@k, rerank@k and A-Acc over k samples per question; each sample is scored by s(c) through
    the shared scoring path (one batched forward per batch)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    questions = [ex["question"] for ex in examples]
    texts, ids = complete(model, enc, questions, max_new_tokens, k, temperature, batch_size, generator)
    pairs = [(encode_pair(enc, questions[i // k], "")[0], ids[i]) for i in range(len(ids))]
    total, count = score_pairs(model, pairs, enc.eot_token, batch_size)
    scores = mean_logprob(total, count).view(len(examples), k)  # (B, K) s(c)
    answers = [extract_answer(t) for t in texts]
    gold = [extract_answer(ex["answer"]) for ex in examples]
    labels = torch.tensor([[answers[i * k + j] == gold[i] for j in range(k)] for i in range(len(examples))])
    maj = sum(majority_vote(answers[i * k:(i + 1) * k]) == gold[i] for i in range(len(examples)))
    best = scores.argmax(dim=1)
    rerank = sum(bool(labels[i, best[i]]) for i in range(len(examples)))
    a_acc, n_pairs = assessment_accuracy(scores, labels.float(), torch.ones_like(labels))
    return {f"maj@{k}": maj / len(examples), f"rerank@{k}": rerank / len(examples),
            "a_acc": a_acc, "a_acc_pairs": n_pairs,
            "mixed_share": float(((labels.sum(1) > 0) & (labels.sum(1) < k)).float().mean()),
            "any_correct": float((labels.sum(1) > 0).float().mean())}


@torch.no_grad()
def group_scores(model, enc, groups, batch_size=128):
    """s(c) of every candidate of stored groups (candidates.py) under `model`, as (B, K) tensors:
    scores, correct, gold, valid (padding False)."""
    K = max(len(g["candidates"]) for g in groups)
    shape = (len(groups), K)
    correct, gold, valid = (torch.zeros(shape, dtype=torch.bool) for _ in range(3))
    pairs = []
    for b, group in enumerate(groups):
        prompt = encode_pair(enc, group["question"], "")[0]
        for j, c in enumerate(group["candidates"]):
            pairs.append((prompt, c["ids"]))
            correct[b, j], gold[b, j], valid[b, j] = c["correct"], c["gold"], True
    total, count = score_pairs(model, pairs, enc.eot_token, batch_size)
    scores = torch.zeros(shape)
    scores[valid] = mean_logprob(total, count).cpu()  # row-major order, the order pairs were listed in
    return scores, correct, gold, valid


def group_assessment(model, enc, groups, batch_size=128):
    """A-Acc of `model` on stored candidate groups: over the sampled chains only, and with the gold chain
    counted as one more positive."""
    scores, correct, gold, valid = group_scores(model, enc, groups, batch_size)
    samples_only, _ = assessment_accuracy(scores, correct.float(), valid & ~gold)
    with_gold, _ = assessment_accuracy(scores, correct.float(), valid)
    return {"a_acc_train": samples_only, "a_acc_train_gold": with_gold}


@torch.no_grad()
def gold_perplexity(model, enc, examples, batch_size=128):
    """exp(-sum S / sum |c|) of the reference COTs (their end-of-text included); pairs longer than the model's
    context are left out."""
    pairs = [encode_pair(enc, ex["question"], ex["answer"]) for ex in examples]
    pairs = [pair for pair in pairs if fits(pair, model.config.block_size)]
    total, count = score_pairs(model, pairs, enc.eot_token, batch_size)
    return float(torch.exp(-total.sum() / count.sum()))


def evaluate_model(model, enc, examples, cfg):
    """Every metric of the module docstring on `examples`, as a flat dict."""
    model.eval()
    greedy = greedy_accuracy(model, enc, examples[:cfg.n_questions], cfg.max_new_tokens, cfg.batch_size)
    metrics = {"t_acc": greedy["accuracy"], "degeneration": greedy["degeneration"], "n_questions": greedy["n"],
               "gold_ppl": gold_perplexity(model, enc, examples[:cfg.n_questions], cfg.batch_size)}
    if cfg.k_questions > 0 and cfg.k > 0:
        metrics.update(sampled_metrics(model, enc, examples[:cfg.k_questions], cfg.k, cfg.temperature,
                                       cfg.max_new_tokens, cfg.batch_size, cfg.seed))
    return metrics


def format_table(rows):
    """rows: {name: metrics dict} -> a markdown table with one column per model."""
    names = list(rows)
    keys = [k for k in rows[names[0]] if isinstance(rows[names[0]][k], (int, float)) or rows[names[0]][k] is None]
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in keys:
        cells = ["-" if rows[n].get(key) is None else f"{rows[n][key]:.4g}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg):
    device = pick_device(cfg.device)
    directory = model_directory(cfg.ckpt)
    model, enc = load_model_and_tokenizer(directory, device)
    task = run_task(directory, cfg.dataset, cfg.data_dir)
    with autocast(device, cfg.dtype):
        metrics = evaluate_model(model, enc, task[cfg.split], cfg)
    print(format_table({str(directory): metrics}))
    out = Path(cfg.out) if cfg.out else Path(cfg.ckpt) / f"eval_{cfg.split}.json"
    out.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"wrote {out}")
    return metrics


if __name__ == "__main__":
    main(run, Config)
