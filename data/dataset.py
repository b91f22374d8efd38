"""Tasks as lists of GSM8K-format records {"question", "answer"}, and the one prompt format.

A training example is the prompt `format_prompt(question)` followed by the completion: the answer text,
then the end-of-text token (the tokenizer appends it; only the completion is ever scored).

load_task("synth") builds the built-in task (data/synth.py); load_task("gsm8k", data_dir) reads GSM8K's
train.jsonl and test.jsonl, which download_gsm8k fetches on a machine with internet.
"""

import json
import os
import tempfile
import urllib.request
from pathlib import Path

from configurator import UserError
from data import synth
from data.answers import extract_answer

GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
TASKS = ("synth", "gsm8k")


def format_prompt(question):
    """The prompt a question is asked with, in training, sampling and evaluation alike."""
    return f"Question: {question}\nAnswer:\n"


def load_jsonl(path):
    """GSM8K-format records from a jsonl file; any malformed input raises UserError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read ({error})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: malformed JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with keys question and answer")
        for key in ("question", "answer"):
            if key not in record:
                raise UserError(f"{where}: missing key '{key}'")
            if not isinstance(record[key], str):
                raise UserError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}")
        if extract_answer(record["answer"]) is None:
            raise UserError(f"{where}: answer has no final line '#### N' with a number N")
        records.append({"question": record["question"], "answer": record["answer"]})
    if not records:
        raise UserError(f"{path}: empty file, no records")
    return records


def download_gsm8k(dest_dir, timeout=10):
    """Fetch GSM8K's train.jsonl and test.jsonl into dest_dir (each written whole or not at all)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        url = GSM8K_URL.format(split=split)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                content = response.read()
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            raise UserError(f"downloading {url} failed ({error}); offline, put train.jsonl and test.jsonl from "
                            f"https://github.com/openai/grade-school-math (grade_school_math/data/) in {dest_dir} "
                            f"by hand") from None
        handle, temporary = tempfile.mkstemp(dir=dest_dir, prefix=f".{split}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(content)
            load_jsonl(temporary)  # a truncated or wrong download must not replace a good file
            os.replace(temporary, dest_dir / f"{split}.jsonl")
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def load_task(name="synth", data_dir=None, seed=1337, n_train=None, n_val=500, n_test=None,
              difficulty=synth.Difficulty()):
    """Splits {"train", "val", "test"} of GSM8K-format records.

    synth: drawn by synth.make_splits under `seed`; n_train and n_test default to 20,000 and 1,000.
    gsm8k: data_dir/train.jsonl and data_dir/test.jsonl; val is the last n_val training records (the order
    of the file, so it is deterministic); n_train and n_test, when given, keep only the first records.
    """
    if name == "synth":
        n_train = 20_000 if n_train is None else n_train
        n_test = 1_000 if n_test is None else n_test
        return synth.make_splits(n_train, n_val, n_test, seed, difficulty)
    if name == "gsm8k":
        if data_dir is None:
            raise UserError("task gsm8k needs data_dir, the folder with train.jsonl and test.jsonl "
                            "(data.dataset.download_gsm8k fetches them)")
        train = load_jsonl(Path(data_dir) / "train.jsonl")
        test = load_jsonl(Path(data_dir) / "test.jsonl")
        if not 0 <= n_val < len(train):
            raise UserError(f"n_val={n_val} must be at least 0 and below the {len(train)} training records")
        fit = train[:len(train) - n_val]
        return {"train": fit[:n_train], "val": train[len(train) - n_val:], "test": test[:n_test]}
    raise UserError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")


def task_from_config(config):
    """The splits a training config describes. `config` is a dict (a saved run's config works too) with the
    keys dataset, data_dir, data_seed, n_train and, for synth, min_chain_steps, max_chain_steps, max_factor
    and max_number; missing keys take the defaults."""
    d = synth.Difficulty()
    try:
        difficulty = synth.Difficulty(min_steps=config.get("min_chain_steps", d.min_steps),
                                      max_steps=config.get("max_chain_steps", d.max_steps),
                                      max_factor=config.get("max_factor", d.max_factor),
                                      max_number=config.get("max_number", d.max_number))
    except ValueError as e:
        raise UserError(f"difficulty: {e}") from None
    return load_task(config.get("dataset", "synth"), data_dir=config.get("data_dir") or None,
                     seed=config.get("data_seed", 0), n_train=config.get("n_train"), difficulty=difficulty)


def run_config(model_dir):
    """The training config saved with the checkpoint in `model_dir` (its trainer.json), or {} when there is none
    (a Hugging Face model, a model saved on its own)."""
    trainer = Path(model_dir) / "trainer.json"
    return json.loads(trainer.read_text()).get("config", {}) if trainer.is_file() else {}


def run_task(model_dir, dataset="synth", data_dir=""):
    """The task the checkpoint in `model_dir` was trained on (its saved config says which), so that
    candidates and evaluations use the same training and test questions. A directory without a training
    config falls back to the given dataset and data_dir."""
    return task_from_config(run_config(model_dir) or {"dataset": dataset, "data_dir": data_dir})
