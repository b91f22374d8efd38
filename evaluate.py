"""
The metrics of docs/method.md section 8 for a checkpoint and a split of questions: T-Acc (greedy decoding), maj@k
(ties go to the answer reached first [ours]), rerank@k, A-Acc (a tie counts half [ours]; over the k samples of each
test question here, over the training groups in train_align.py), gold PPL and the degeneration rate [ours].

    python evaluate.py --ckpt=out/vft                  # prints a table, writes out/vft/eval_test.json
    python evaluate.py --ckpt=path/to/SmolLM2-135M --dataset=gsm8k --data_dir=data/gsm8k --dtype=bfloat16
"""

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

import compute
from checkpoint import load_model_and_tokenizer, model_directory
from configurator import UserError, bounded, check_input, check_output, main, validate, write_output
from data.answers import extract_answer, is_correct, is_degenerate
from data.dataset import TASKS, run_task
from losses import mean_logprob
from sample import generate
from sequences import encode_pair, fits, score_pairs


@dataclass
class Config:
    ckpt: str = "out/vft"                       # run, checkpoint or model directory (nanoAFT or Hugging Face)
    dataset: str = field(default="synth", metadata={"choices": TASKS})  # task of a model without a run (else the run's)
    data_dir: str = ""                          # gsm8k jsonl directory, likewise
    split: str = field(default="test", metadata={"choices": ("test", "val")})  # "val" to tune, "test" for the table
    n_questions: int = bounded(1000, min=1)     # questions for greedy accuracy and gold PPL
    k: int = bounded(8, min=1)                  # samples per question for maj@k, rerank@k and test A-Acc
    k_questions: int = bounded(200, min=0)      # questions for the sampled metrics (0 = skip them)
    temperature: float = bounded(0.8, min=0.0)  # sampling temperature
    max_new_tokens: int = bounded(160, min=1)   # generation budget per answer
    batch_size: int = bounded(128, min=1)       # rows per generation batch
    seed: int = 0                               # sampling seed
    device: str = "auto"                        # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": compute.DTYPES})  # bfloat16: autocast (compute.py)
    out: str = ""                               # JSON output path ("" = <ckpt>/eval_<split>.json)


def complete(model, enc, questions, max_new_tokens, num_samples=1, temperature=0.0, batch_size=128,
             generator=None, label=""):
    """Generated texts and their token ids: num_samples per question, prompt-major. A batch gets at most the
    positions its longest prompt leaves in the model's context. With a label, progress every 10 seconds."""
    per_batch, block_size = max(1, batch_size // num_samples), model.config.block_size
    ids, t0, shown = [], time.time(), time.time()
    for start in range(0, len(questions), per_batch):
        prompts = [encode_pair(enc, q, "")[0] for q in questions[start:start + per_batch]]
        room = block_size - max(map(len, prompts))
        if room <= 0:
            raise UserError(f"a question of {block_size - room} tokens leaves no room for an answer in the "
                            f"model's block_size of {block_size}")
        out = generate(model, prompts, min(max_new_tokens, room), num_samples=num_samples, temperature=temperature,
                       eot_id=enc.eot_token, generator=generator, n_vocab=enc.n_vocab)
        ids += [out.row(row) for row in range(out.tokens.shape[0])]
        done, left, now = start + len(prompts), len(questions) - start - len(prompts), time.time()
        if label and (now - shown >= 10 or not left):
            compute.log(f"{label}: {done}/{len(questions)} questions | {compute.progress(t0, done, left)}")
            shown = now
    return [enc.decode([t for t in row if t != enc.eot_token], errors="replace") for row in ids], ids


def greedy_accuracy(model, enc, examples, max_new_tokens=160, batch_size=128):
    """T-Acc and degeneration rate of greedy decoding on `examples` (dicts with question, answer)."""
    texts, _ = complete(model, enc, [ex["question"] for ex in examples], max_new_tokens, batch_size=batch_size,
                        label="greedy decoding")
    correct = [is_correct(text, ex["answer"]) for text, ex in zip(texts, examples)]
    return {"accuracy": sum(correct) / len(examples), "degeneration": sum(map(is_degenerate, texts)) / len(examples),
            "n": len(examples), "outputs": texts, "correct": [int(c) for c in correct]}


def assessment_accuracy(scores, labels, valid):
    """A-Acc: fraction of (positive, negative) pairs of the same group with s_p > s_n, a tie counting half.
    scores, labels (1 = correct), valid: (B, K). Returns (accuracy or None when there is no pair, pair count)."""
    pairs = ((labels > 0) & valid)[:, :, None] & ((labels <= 0) & valid)[:, None, :]  # (B, K, K) (positive, negative)
    diff = (scores[:, :, None] - scores[:, None, :])[pairs]  # s_p - s_n of every pair
    wins = (diff > 0).float() + 0.5 * (diff == 0).float()
    return (wins.sum().item() / len(wins) if len(wins) else None), len(wins)


def majority_vote(answers):
    """Most frequent non-missing answer; ties go to the one reached first; None when every answer is missing."""
    counts = Counter(a for a in answers if a is not None)  # in order of first appearance, which max keeps
    return max(counts, key=counts.get) if counts else None


def sampled_metrics(model, enc, examples, k, temperature, max_new_tokens, batch_size=128, seed=0):
    """maj@k, rerank@k and A-Acc over k samples per question, each sample scored by s(c)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    questions, B = [ex["question"] for ex in examples], len(examples)
    texts, ids = complete(model, enc, questions, max_new_tokens, k, temperature, batch_size, generator,
                          label=f"sampling {k} answers per question")
    pairs = [(encode_pair(enc, questions[i // k], "")[0], ids[i]) for i in range(len(ids))]
    scores = mean_logprob(*score_pairs(model, pairs, enc.eot_token, batch_size)).view(B, k).cpu()  # (B, K) s(c)
    answers, gold = [extract_answer(t) for t in texts], [extract_answer(ex["answer"]) for ex in examples]
    labels = torch.tensor([[answers[i * k + j] == gold[i] for j in range(k)] for i in range(B)])  # (B, K)
    maj = sum(majority_vote(answers[i * k:(i + 1) * k]) == gold[i] for i in range(B))
    rerank = labels[torch.arange(B), scores.argmax(dim=1)].sum().item()  # the best-scored sample of each question
    a_acc, n_pairs = assessment_accuracy(scores, labels.float(), torch.ones_like(labels))
    right = labels.sum(dim=1)  # (B,)
    return {f"maj@{k}": maj / B, f"rerank@{k}": rerank / B, "a_acc": a_acc, "a_acc_pairs": n_pairs,
            "mixed_share": ((right > 0) & (right < k)).float().mean().item(),
            "any_correct": (right > 0).float().mean().item()}


@torch.no_grad()
def group_scores(model, enc, groups, batch_size=128):
    """s(c) of every candidate of stored groups (candidates.py) under `model`, as (B, K) tensors:
    scores, correct, gold, valid (padding False)."""
    K = max(len(g["candidates"]) for g in groups)
    valid = torch.tensor([[j < len(g["candidates"]) for j in range(K)] for g in groups])  # (B, K)
    listed = [(g, c) for g in groups for c in g["candidates"]]  # row-major: the order of valid's True entries
    scores, correct, gold = torch.zeros(valid.shape), torch.zeros_like(valid), torch.zeros_like(valid)
    pairs = [(encode_pair(enc, g["question"], "")[0], c["ids"]) for g, c in listed]
    scores[valid] = mean_logprob(*score_pairs(model, pairs, enc.eot_token, batch_size)).cpu()
    correct[valid] = torch.tensor([c["correct"] for _, c in listed], dtype=torch.bool)
    gold[valid] = torch.tensor([c["gold"] for _, c in listed], dtype=torch.bool)
    return scores, correct, gold, valid


@torch.no_grad()  # scoring only: no graph for score_pairs to build
def evaluate_model(model, enc, examples, cfg, groups=()):
    """Every metric of the module docstring on `examples`, as a flat dict; given stored candidate groups, also their
    A-Acc (a_acc_train) over the sampled chains only (gold chains left out)."""
    greedy = greedy_accuracy(model, enc, examples[:cfg.n_questions], cfg.max_new_tokens, cfg.batch_size)
    golds = [p for p in (encode_pair(enc, ex["question"], ex["answer"]) for ex in examples[:cfg.n_questions])
             if fits(p, model.config.block_size)]  # the reference COTs (end-of-text included) that fit the context
    total, count = score_pairs(model, golds, enc.eot_token, cfg.batch_size)
    metrics = {"t_acc": greedy["accuracy"], "degeneration": greedy["degeneration"], "n_questions": greedy["n"],
               "gold_ppl": float(torch.exp(-total.sum() / count.sum())),  # gold PPL: exp(-sum S / sum |c|)
               "correct": greedy["correct"]}  # per question, for paired comparisons (reproduce.py)
    if cfg.k_questions > 0:
        metrics.update(sampled_metrics(model, enc, examples[:cfg.k_questions], cfg.k, cfg.temperature,
                                       cfg.max_new_tokens, cfg.batch_size, cfg.seed))
    if groups:
        scores, correct, gold, valid = group_scores(model, enc, groups, cfg.batch_size)
        metrics["a_acc_train"] = assessment_accuracy(scores, correct.float(), valid & ~gold)[0]
    return metrics


def format_table(rows):
    """rows: {name: metrics dict} -> a markdown table of the numeric metrics, one column per model."""
    names, first = list(rows), next(iter(rows.values()))
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in [key for key, value in first.items() if value is None or isinstance(value, (int, float))]:
        lines.append(f"| {key} | " + " | ".join("-" if rows[n].get(key) is None else f"{rows[n][key]:.4g}"
                                                 for n in names) + " |")
    return "\n".join(lines)


def run(cfg):
    """Evaluate cfg.ckpt on cfg.split; every setting and the output path are checked before the model loads."""
    validate(cfg)  # the command line did already; a notebook's Config(...) did not
    check_input(cfg.ckpt, "ckpt")
    out = check_output(cfg.out or Path(cfg.ckpt) / f"eval_{cfg.split}.json", "out", is_dir=False)
    device, directory = compute.pick_device(cfg.device), model_directory(cfg.ckpt)
    model, enc = load_model_and_tokenizer(directory, device)
    examples = run_task(directory, cfg.dataset, cfg.data_dir)[cfg.split]
    with compute.autocast(device, cfg.dtype):
        metrics = evaluate_model(model, enc, examples, cfg)
    print(format_table({str(directory): metrics}))
    write_output(out, json.dumps(metrics, indent=1) + "\n")
    print(f"wrote {out}")
    return metrics


if __name__ == "__main__":
    main(run, Config)
