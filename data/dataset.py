"""Tasks as lists of GSM8K-format records {"question", "answer"}, and the one prompt format: a training example
is `format_prompt(question)` followed by the completion, the answer text and then the end-of-text token (only the
completion is ever scored). synth is generated (data/synth.py); gsm8k and aqua are read from data_dir, never
downloaded (no network at run time)."""

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from configurator import UserError, bounded, check_path, validate
from data import synth
from data.answers import extract_answer

TASKS = ("synth", "gsm8k", "aqua")
FILES = {"gsm8k": ("train.jsonl", "test.jsonl"), "aqua": ("dev.json", "test.json")}
LETTERS = "ABCDE"


@dataclass
class TaskConfig:  # the task a run trains on (train_sft.Config's, saved with the run; task_from_config reads it)
    dataset: str = field(default="synth", metadata={"choices": TASKS})  # synth: generated; gsm8k, aqua: data_dir's
    data_dir: str = ""              # folder of the task files (gsm8k: train/test.jsonl; aqua: dev/test.json)
    n_train: int = bounded(30000, min=1)  # generated training problems (synth)
    n_test: int = bounded(1000, min=1)  # test questions (synth: generated, drawn first; gsm8k, aqua: the first ones)
    data_seed: int = bounded(0, min=0)  # seed of the generated task (the same task for every training seed)
    min_chain_steps: int = bounded(2, min=1)  # difficulty (synth): fewest reasoning steps per problem
    max_chain_steps: int = bounded(4, min=1)  # difficulty (synth): most reasoning steps per problem
    max_factor: int = bounded(12, min=2)  # difficulty (synth): largest multiplier, divisor, price or count
    max_number: int = bounded(40, min=2)  # difficulty (synth): largest amount that is only added or subtracted


TASK_FIELDS = tuple(f.name for f in fields(TaskConfig))


def format_prompt(question):
    """The prompt a question is asked with, in training, sampling and evaluation alike."""
    return f"Question: {question}\nAnswer:\n"


def _read_objects(path, keys):
    """(where, record) for each non-blank line of a JSON-lines file, where = "file:line" and record a JSON object
    with string values under `keys`; anything else raises a one-line UserError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:  # not found, a folder, no permission
        raise UserError(f"{path}: cannot read ({error.strerror.lower()})") from None
    objects = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8"))  # a BOM may open the file
        except UnicodeDecodeError as error:
            raise UserError(f"{where}: not UTF-8 text (byte {error.start + 1} of the line)") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: malformed JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with keys {', '.join(keys)}")
        for key in keys:
            if key not in record:
                raise UserError(f"{where}: missing key '{key}'")
            if key != "options" and not isinstance(record[key], str):
                raise UserError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}")
        objects.append((where, record))
    if not objects:
        raise UserError(f"{path}: empty file, no records")
    return objects


def load_jsonl(path):
    """GSM8K-format records from a jsonl file; any malformed input raises UserError naming file and line."""
    records = []
    for where, record in _read_objects(path, ("question", "answer")):
        if extract_answer(record["answer"]) is None:
            raise UserError(f"{where}: answer has no final line '#### N' with a number N")
        records.append({"question": record["question"], "answer": record["answer"]})
    return records


def load_aqua(path):
    """AQuA-RAT records (question, options "A)..".."E)..", rationale, correct letter) as GSM8K-format ones: the
    question followed by its options, one a line, so the prompt shows them; the answer is the rationale as written
    and then GSM8K's final line `#### C`, so extraction, grading and the majority vote work unchanged."""
    records = []
    for where, record in _read_objects(path, ("question", "options", "rationale", "correct")):
        options = record["options"]
        if not isinstance(options, list) or [str(o)[:2] for o in options] != [f"{x})" for x in LETTERS]:
            raise UserError(f"{where}: 'options' must be five strings 'A)...' to 'E)...'")
        if record["correct"] not in LETTERS:
            raise UserError(f"{where}: 'correct' must be a letter A to E, got {record['correct']!r}")
        records.append({"question": "\n".join([record["question"].strip(), *options]),
                        "answer": f"{record['rationale'].strip()}\n#### {record['correct']}".strip()})
    return records


def load_task(name="synth", data_dir=None, seed=1337, n_train=None, n_val=None, n_test=None,
              difficulty=synth.Difficulty()):
    """Splits {"train", "val", "test"} of GSM8K-format records. synth: synth.make_splits under `seed` (n_train,
    n_val, n_test default to 20,000, 500, 1,000). gsm8k: data_dir/train.jsonl, test.jsonl, val the last n_val (500)
    training records. aqua: data_dir/dev.json trains (not AQuA-RAT's 97k-problem train.json), its last tenth is val;
    test.json. val is a file's tail, so deterministic; n_train and n_test keep only the first records."""
    if name == "synth":
        return synth.make_splits(20_000 if n_train is None else n_train, 500 if n_val is None else n_val,
                                 1_000 if n_test is None else n_test, seed, difficulty)
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")
    if not data_dir or not check_path(data_dir, "data_dir").is_dir():
        raise UserError(f"task {name} needs data_dir, an existing folder with {' and '.join(FILES[name])}"
                        + (f" (got '{data_dir}')" if data_dir else ""))
    load = load_jsonl if name == "gsm8k" else load_aqua
    train, test = (load(Path(data_dir) / file) for file in FILES[name])
    n_val = (500 if name == "gsm8k" else len(train) // 10) if n_val is None else n_val
    if not 0 <= n_val < len(train):
        raise UserError(f"n_val={n_val} must be at least 0 and below the {len(train)} training records")
    fit = train[:len(train) - n_val]
    return {"train": fit[:n_train], "val": train[len(train) - n_val:], "test": test[:n_test]}


def task_from_config(config):
    """The splits a config dict with TaskConfig's keys describes (a saved run's config works too); a missing key
    takes load_task's or synth.Difficulty's default."""
    names = {"min_chain_steps": "min_steps", "max_chain_steps": "max_steps", "max_factor": "max_factor",
             "max_number": "max_number"}  # the config's names of synth.Difficulty's fields
    try:
        difficulty = synth.Difficulty(**{field: config[key] for key, field in names.items() if key in config})
    except ValueError as e:
        raise UserError(f"difficulty: {e}") from None
    return load_task(config.get("dataset", "synth"), data_dir=config.get("data_dir") or None,
                     seed=config.get("data_seed", 0), n_train=config.get("n_train"), n_test=config.get("n_test"),
                     difficulty=difficulty)


def run_config(model_dir):
    """The training config saved with the checkpoint in `model_dir` (trainer.json, its task fields checked), or {}."""
    path = Path(model_dir) / "trainer.json"
    try:
        config = json.loads(path.read_text()).get("config", {}) if path.is_file() else {}
        validate(TaskConfig(**{key: config[key] for key in TASK_FIELDS if key in config}))
    except (OSError, ValueError, AttributeError, TypeError, UserError) as e:  # unreadable, not JSON, a wrong value
        raise UserError(f"{path}: not the config of a training run ({e})") from None
    return config


def run_task(model_dir, dataset="synth", data_dir=""):
    """The task the checkpoint in `model_dir` was trained on, so that candidates and evaluations use its training
    and test questions; without a saved training config, the given dataset and data_dir."""
    return task_from_config(run_config(model_dir) or {"dataset": dataset, "data_dir": data_dir})
