"""
Step 2 of AFT: sample k chains of thought per training question from the VFT model, drop exact duplicates,
label each positive or negative by its final answer, grade it (PAPER.md section 5), add the gold chain as a
positive, and store each candidate's sum log-prob S under the VFT model (DPO's reference, computed once).

    python candidates.py --ckpt=out/vft             # writes out/vft/candidates.jsonl
    python candidates.py --ckpt=out/gsm8k-vft --max_new_tokens=320 --dtype=bfloat16

The file starts with a header line holding the fingerprints of the model and tokenizer that made it (hashes of
their files); loading it for another model or tokenizer is refused. Then one JSON line per question:
    {"question", "answer", "candidates": [{"ids", "text", "correct", "grade", "gold", "sum_logp", "n_tokens"}],
     "samples_correct", "samples", "samples_cut"}

A sample cut at max_new_tokens has no final answer, so it is labelled wrong: a negative for alignment. That is
right for a chain that loops, wrong for one that was merely long, so the summary reports the share cut
(`cut_share`) and a warning asks for a larger budget when it is high. Questions whose reference chain does not
fit in the model's context are left out, with a count.

Under torchrun (`torchrun --nproc_per_node=8 candidates.py ...`) every process loads the model, samples every
world_size-th question with its own random stream (seed + rank), and rank 0 gathers the groups back into question
order and writes the file (distributed.py).
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import distributed
from configurator import UserError, config_to_dict, main
from data.answers import grade, is_correct
from data.dataset import run_task
from evaluate import complete
from hf import load_model_and_tokenizer, model_directory, tokenizer_files, weight_files
from sequences import DTYPES, autocast, encode_pair, fits, score_pairs


@dataclass
class Config:
    ckpt: str = "out/vft"           # the VFT run, or a model directory (nanoAFT or Hugging Face)
    out: str = ""                   # "" = <ckpt>/candidates.jsonl
    dataset: str = "synth"          # task, for a model without a train_sft.py config (else the run's own task)
    data_dir: str = ""              # gsm8k jsonl directory, likewise
    n_questions: int = 2000         # training questions to sample for (the first ones of the split)
    k: int = 8                      # samples per question [ours default, PAPER.md section 3]
    temperature: float = 0.8        # sampling temperature
    max_new_tokens: int = 160       # tokens per chain at most
    add_gold: bool = True           # add the reference chain to each group as a positive [ours]
    batch_size: int = 256           # generated rows per batch
    seed: int = 0                   # sampling seed
    device: str = "auto"            # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": DTYPES})  # bfloat16: autocast (sequences.py)


def files_fingerprint(paths):
    """Short sha256 of the files' bytes, one file after another (for one file: the hash of that file)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def fingerprints(directory):
    """Candidates belong to exactly these weights and this tokenizer (every shard and tokenizer file hashed)."""
    files = tokenizer_files(directory)
    if not files:
        raise UserError(f"{directory}: no tokenizer files to fingerprint")
    return {"model": files_fingerprint(weight_files(directory)), "tokenizer": files_fingerprint(files)}


def candidates_path(cfg):
    return Path(cfg.out) if cfg.out else Path(cfg.ckpt) / "candidates.jsonl"


@torch.no_grad()
def build_groups(model, enc, examples, k, temperature, max_new_tokens, add_gold=True, batch_size=256, seed=0,
                 log_every=0):
    """One group per example: unique sampled chains (plus the gold one), each labelled, graded and scored."""
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    per_batch = max(1, batch_size // k)
    groups, t0 = [], time.time()
    for start in range(0, len(examples), per_batch):
        chunk = examples[start:start + per_batch]
        texts, ids = complete(model, enc, [ex["question"] for ex in chunk], max_new_tokens, k, temperature,
                              batch_size, generator)
        for i, ex in enumerate(chunk):
            gold_ids = encode_pair(enc, ex["question"], ex["answer"])[1]
            seen = {tuple(gold_ids)} if add_gold else set()
            cands = [{"ids": gold_ids, "text": ex["answer"], "gold": True}] if add_gold else []
            for text, cand_ids in zip(texts[i * k:(i + 1) * k], ids[i * k:(i + 1) * k]):
                if tuple(cand_ids) not in seen:  # exact duplicates carry no extra preference information
                    seen.add(tuple(cand_ids))
                    cands.append({"ids": cand_ids, "text": text, "gold": False})
            for c in cands:
                c["correct"] = is_correct(c["text"], ex["answer"])
                c["grade"] = grade(c["text"], ex["answer"])
            raw_correct = sum(is_correct(text, ex["answer"]) for text in texts[i * k:(i + 1) * k])
            cut = sum(not cand_ids or cand_ids[-1] != enc.eot_token for cand_ids in ids[i * k:(i + 1) * k])
            groups.append({"question": ex["question"], "answer": ex["answer"], "candidates": cands,
                           "samples_correct": raw_correct, "samples": k, "samples_cut": cut})
        done = start + len(chunk)
        if log_every and ((done // per_batch) % log_every == 0 or done == len(examples)):
            elapsed = time.time() - t0
            print(f"candidates: {done}/{len(examples)} questions | elapsed {elapsed:.0f}s | "
                  f"eta {elapsed / done * (len(examples) - done):.0f}s", flush=True)
    score_groups(model, enc, groups, batch_size)
    return groups


@torch.no_grad()
def score_groups(model, enc, groups, batch_size=256):
    """Store S (sum log-prob) and |c| of every candidate under `model`: the frozen reference of DPO."""
    flat = [(group, c) for group in groups for c in group["candidates"]]
    pairs = [(encode_pair(enc, g["question"], "")[0], c["ids"]) for g, c in flat]
    total, count = score_pairs(model, pairs, enc.eot_token, batch_size)
    for (_, c), s, n in zip(flat, total.tolist(), count.tolist()):
        c["sum_logp"], c["n_tokens"] = s, n


def save_groups(path, groups, header):
    """One header line, then one group per line; written to a temporary file and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(header) + "\n")
        for group in groups:
            f.write(json.dumps(group) + "\n")
    os.replace(tmp, path)


def load_groups(path, model_dir):
    """The groups in `path`, refused unless they were made by the model and tokenizer in `model_dir`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no candidate file (build it with: python candidates.py --ckpt=...)")
    with open(path) as f:
        lines = f.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
        groups = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt candidate file ({e})") from None
    if not isinstance(header, dict) or "fingerprint" not in header:
        raise UserError(f"{path}: no fingerprint header; not a candidate file written by candidates.py")
    expected = fingerprints(model_directory(model_dir))
    for part in ("model", "tokenizer"):
        if header["fingerprint"].get(part) != expected[part]:
            raise UserError(f"{path}: made by another {part} ({header['fingerprint'].get(part)}) than the one in "
                            f"{model_dir} ({expected[part]}); rebuild with: python candidates.py --ckpt={model_dir}")
    return groups, header


def summarize(groups):
    """Shares that tell whether the groups carry a preference signal: mixed_share counts questions whose
    k samples hold at least one right and one wrong answer."""
    right = [g["samples_correct"] for g in groups]  # of the k raw samples, before deduplication
    k = groups[0]["samples"]
    return {"groups": len(groups),
            "mean_unique_samples": sum(sum(not c["gold"] for c in g["candidates"]) for g in groups) / len(groups),
            "mixed_share": sum(0 < r < k for r in right) / len(groups),  # >= 1 right and >= 1 wrong sample
            "sample_accuracy": sum(right) / (k * len(groups)),
            "pair_share": sum(any(c["correct"] for c in g["candidates"]) and not all(c["correct"] for c in g["candidates"])
                              for g in groups) / len(groups),  # groups (gold included) with a preference pair
            "cut_share": sum(g["samples_cut"] for g in groups) / (k * len(groups))}  # cut at max_new_tokens


def interleave(shards):
    """Undo the round-robin split: shards[r] holds items r, r + W, r + 2W, ... of a list (W = len(shards))."""
    return [shard[j] for j in range(max(map(len, shards))) for shard in shards if j < len(shard)]


def build(cfg):
    """Sample, label, grade and score candidates for cfg.ckpt; write them; return (groups, header)."""
    device = distributed.init(cfg.device)
    directory = model_directory(cfg.ckpt)
    model, enc = load_model_and_tokenizer(directory, device)
    task = run_task(directory, cfg.dataset, cfg.data_dir)
    block_size = model.config.block_size
    first = task["train"][:cfg.n_questions]
    examples = [ex for ex in first if fits(encode_pair(enc, ex["question"], ex["answer"]), block_size)]
    if len(examples) < len(first):
        distributed.log(f"candidates: left out {len(first) - len(examples)} of {len(first)} questions: question and "
                        f"reference chain are longer than block_size {block_size}", flush=True)
    if not examples:
        raise UserError(f"{directory}: no training question fits in the model's block_size of {block_size}")
    processes = f", {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    distributed.log(f"candidates: sampling k={cfg.k} at temperature {cfg.temperature} for {len(examples)} training "
                    f"questions with {directory}{processes}", flush=True)
    shard = examples[distributed.rank()::distributed.world_size()]
    with autocast(device, cfg.dtype):
        groups = build_groups(model, enc, shard, cfg.k, cfg.temperature, cfg.max_new_tokens, cfg.add_gold,
                              cfg.batch_size, cfg.seed + 1_000_003 * distributed.rank(),
                              log_every=5 if distributed.is_main() else 0)
    groups = interleave(distributed.gather_json(groups))
    header = {"fingerprint": fingerprints(directory), "config": config_to_dict(cfg), "summary": summarize(groups)}
    path = candidates_path(cfg)
    if distributed.is_main():
        save_groups(path, groups, header)
    distributed.barrier()  # the file exists for every rank from here on
    distributed.log(f"candidates: {json.dumps(header['summary'])} -> {path}", flush=True)
    if header["summary"]["cut_share"] > 0.05:
        distributed.log(f"candidates: warning: {header['summary']['cut_share']:.0%} of the samples were cut at "
                        f"max_new_tokens={cfg.max_new_tokens} and count as wrong; consider a larger --max_new_tokens",
                        flush=True)
    return groups, header


if __name__ == "__main__":
    main(build, Config)
    distributed.finish()  # under torchrun: leave together, skipping a teardown that can abort
