"""
Step 2 of AFT (docs/method.md section 3): sample k chains of thought per training question from the VFT model, drop
exact duplicates, label and grade each (docs/method.md 5.2), add the gold chain as a positive, and store each
candidate's sum log-prob S under the VFT model (DPO's frozen reference, computed once).

    python candidates.py --ckpt=out/vft             # writes out/vft/candidates.jsonl

A header line (the settings, the run's task, and the hashes of the model and tokenizer files that made it: another
model's file is refused), then one group per line (GROUP, CANDIDATE). A chain cut at max_new_tokens counts as wrong.
"""

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import compute
from checkpoint import fingerprints, load_model_and_tokenizer, model_directory
from configurator import UserError, bounded, check_input, check_output, config_to_dict, main, validate, write_output
from data.answers import grade, is_correct
from data.dataset import TASKS, run_config, task_from_config
from evaluate import complete
from sequences import encode_pair, fits, score_pairs

GROUP = {"question": str, "answer": str, "candidates": list, "samples_correct": int, "samples": int, "samples_cut": int}
CANDIDATE = {"ids": list, "text": str, "correct": bool, "grade": (int, float), "gold": bool, "sum_logp": (int, float),
             "n_tokens": int}  # (int, float): a JSON number


@dataclass
class Config:
    ckpt: str = "out/vft"                       # the VFT run, or a model directory (nanoAFT or Hugging Face)
    out: str = ""                               # "" = <ckpt>/candidates.jsonl
    dataset: str = field(default="synth", metadata={"choices": TASKS})  # task of a model without a run (else the run's)
    data_dir: str = ""                          # gsm8k jsonl directory, likewise
    n_questions: int = bounded(2000, min=1)     # training questions to sample for (the first ones of the split)
    k: int = bounded(8, min=1)                  # samples per question [ours default]
    temperature: float = bounded(0.8, min=0.0)  # sampling temperature
    max_new_tokens: int = bounded(160, min=1)   # tokens per chain at most
    batch_size: int = bounded(256, min=1)       # generated rows per batch
    seed: int = 0                               # sampling seed
    device: str = "auto"                        # "auto", "cpu", "cuda"
    dtype: str = field(default="float32", metadata={"choices": compute.DTYPES})  # bfloat16: autocast (compute.py)


@torch.no_grad()
def build_groups(model, enc, examples, k, temperature, max_new_tokens, batch_size=256, seed=0):
    """One group per example: the gold chain first [ours], then the unique samples; each labelled, graded, scored."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    texts, ids = complete(model, enc, [ex["question"] for ex in examples], max_new_tokens, k, temperature,
                          batch_size, generator, label=f"candidates: sampling {k} chains per question")
    groups, pairs = [], []
    for i, ex in enumerate(examples):
        samples = list(zip(texts[i * k:(i + 1) * k], ids[i * k:(i + 1) * k]))
        prompt, gold_ids = encode_pair(enc, ex["question"], ex["answer"])
        unique = {tuple(gold_ids): (ex["answer"], True)}  # an exact duplicate carries no extra preference information
        for text, sample_ids in samples:
            unique.setdefault(tuple(sample_ids), (text, False))
        cands = [{"ids": list(key), "text": text, "gold": gold, "correct": is_correct(text, ex["answer"]),
                  "grade": grade(text, ex["answer"])} for key, (text, gold) in unique.items()]
        pairs += [(prompt, c["ids"]) for c in cands]
        groups.append({"question": ex["question"], "answer": ex["answer"], "candidates": cands,
                       "samples_correct": sum(is_correct(text, ex["answer"]) for text, _ in samples), "samples": k,
                       "samples_cut": sum(sample_ids[-1:] != [enc.eot_token] for _, sample_ids in samples)})
    total, count = score_pairs(model, pairs, enc.eot_token, batch_size)  # S and |c| under the VFT model
    for c, s, n in zip((c for g in groups for c in g["candidates"]), total.tolist(), count.tolist()):
        c["sum_logp"], c["n_tokens"] = s, int(n)
    return groups


def problem(record, schema, n_vocab=math.inf):
    """What makes a JSON record unlike its schema (GROUP, CANDIDATE; numbers finite, ids below n_vocab), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key, kind in schema.items():
        value = record.get(key)
        if not isinstance(value, kind) or type(value) in (int, float) and not abs(value) <= 3.4e38:  # float32's range
            return f"'{key}' is missing or not a finite {getattr(kind, '__name__', 'number')}"
    if schema is CANDIDATE:
        ok = record["ids"] and all(type(t) is int and 0 <= t < n_vocab for t in record["ids"])
        return None if ok else f"'ids' is not a non-empty list of token ids < {n_vocab}"
    for j, candidate in enumerate(record["candidates"]):
        if error := problem(candidate, CANDIDATE, n_vocab):
            return f"candidate {j}: {error}"
    return None if record["candidates"] else "a group without candidates"


def load_groups(path, model_dir, n_vocab=math.inf, fits=None):
    """The groups in `path`, every line checked first, refused unless made by the model and tokenizer of model_dir."""
    if not (path := Path(path)).is_file():
        raise UserError(f"{path}: no candidate file (build it with: python candidates.py --ckpt=...)")
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except ValueError as e:  # bytes that are not UTF-8, or text that is not JSON
            raise UserError(f"{path}:{number}: not a line of JSON in UTF-8 ({e})") from None
    header, groups = (records or [None])[0], records[1:]
    if not isinstance(header, dict) or not isinstance(header.get("fingerprint"), dict):
        raise UserError(f"{path}:1: no fingerprint header; not a candidate file written by candidates.py")
    if not groups:
        raise UserError(f"{path}: a header and no groups")
    for number, group in enumerate(groups, start=2):
        if error := problem(group, GROUP, n_vocab) or fits and not fits(group) and "a candidate exceeds the context":
            raise UserError(f"{path}:{number}: {error}")
    expected = fingerprints(model_dir)
    for part in ("model", "tokenizer"):
        if header["fingerprint"].get(part) != expected[part]:
            raise UserError(f"{path}: made by another {part} ({header['fingerprint'].get(part)}) than the one in "
                            f"{model_dir} ({expected[part]}); rebuild with: python candidates.py --ckpt={model_dir}")
    return groups, header


def summarize(groups):
    """Do the groups carry a preference signal? Over the k raw samples of each question: mixed_share (>= 1 right,
    >= 1 wrong), sample_accuracy, cut_share (cut at max_new_tokens); pair_share: groups with a (right, wrong) pair."""
    k, n = groups[0]["samples"], len(groups)
    right = [g["samples_correct"] for g in groups]
    return {"groups": n, "mean_unique_samples": sum(not c["gold"] for g in groups for c in g["candidates"]) / n,
            "mixed_share": sum(0 < r < k for r in right) / n, "sample_accuracy": sum(right) / (k * n),
            "pair_share": sum(len({c["correct"] for c in g["candidates"]}) == 2 for g in groups) / n,
            "cut_share": sum(g["samples_cut"] for g in groups) / (k * n)}


def interleave(shards):
    """Undo the round-robin split: shards[r] holds items r, r + W, r + 2W, ... of a list (W = len(shards))."""
    return [shard[j] for j in range(max(map(len, shards))) for shard in shards if j < len(shard)]


def build(cfg):
    """Sample, label, grade and score candidates for cfg.ckpt; write them; return (groups, header)."""
    validate(cfg)  # the command line did already; a notebook's Config(...) did not
    check_input(cfg.ckpt, "ckpt")
    device = compute.init(cfg.device)
    path = check_output(cfg.out or Path(cfg.ckpt) / "candidates.jsonl", "out", is_dir=False)  # on every rank: all stop
    directory = model_directory(cfg.ckpt)
    model, enc = load_model_and_tokenizer(directory, device)
    run = run_config(directory) or {"dataset": cfg.dataset, "data_dir": cfg.data_dir}  # the run's own task
    first, block_size = task_from_config(run)["train"][:cfg.n_questions], model.config.block_size
    examples = [ex for ex in first if fits(encode_pair(enc, ex["question"], ex["answer"]), block_size)]
    if not examples:
        raise UserError(f"{directory}: no training question fits in the model's block_size of {block_size}")
    compute.log(f"candidates: k={cfg.k} at temperature {cfg.temperature} for {len(examples)} training questions "
                f"with {directory} on {compute.world_size()} process(es); {len(first) - len(examples)} too long")
    with compute.autocast(device, cfg.dtype):
        groups = build_groups(model, enc, examples[compute.rank()::compute.world_size()], cfg.k, cfg.temperature,
                              cfg.max_new_tokens, cfg.batch_size, cfg.seed + 1_000_003 * compute.rank())
    groups = interleave(compute.gather_json(groups))
    task = {"dataset": run.get("dataset", "synth"), "data_dir": run.get("data_dir") or ""}
    header = {"fingerprint": fingerprints(directory), "config": config_to_dict(replace(cfg, **task)),
              "summary": summarize(groups)}
    if compute.is_main():
        write_output(path, "".join(json.dumps(record) + "\n" for record in [header, *groups]))
    compute.barrier()  # the file exists for every rank from here on
    compute.log(f"candidates: {json.dumps(header['summary'])} -> {path}")  # the one summary line
    if header["summary"]["cut_share"] > 0.05:
        compute.log(f"candidates: warning: {header['summary']['cut_share']:.0%} of the samples were cut at "
                    f"--max_new_tokens={cfg.max_new_tokens} and count as wrong; consider a larger budget")
    return groups, header


if __name__ == "__main__":
    main(build, Config)
    compute.finish()  # under torchrun: leave together, skipping a teardown that can abort
