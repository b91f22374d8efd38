"""The import rule, read from the sources with ast: the teaching core never reaches the machine room (Hugging Face
conversion, benchmarks, the reproduction harness), not even inside a function; the doors reach it only lazily,
inside the function that needs it; compute.py stands on torch, the standard library and configurator alone.
And the teaching path stays short enough to read."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_FILES = ("model.py", "sample.py", "sequences.py", "losses.py", "candidates.py", "evaluate.py", "train_sft.py",
              "train_align.py")
DOORS = ("checkpoint.py", "compute.py", "configurator.py", "tokenizer.py")
MACHINE_ROOM = {"hf", "hf_tokenizer", "benchmarks", "reproduce", "transformers", "tokenizers"}
COMPUTE_MAY_IMPORT = {"torch", "configurator"} | set(sys.stdlib_module_names)
TEACHING_PATH_BUDGET = 2400  # lines, blank lines and docstrings included (wc -l)


def core_paths():
    return sorted((ROOT / "data").glob("*.py")) + [ROOT / name for name in CORE_FILES]


def imports(source, module_level_only=False):
    """[(line, top-level module)] for every import in `source`: import statements and importlib.import_module /
    __import__ calls with a literal name. module_level_only skips function bodies, which run only when called."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if module_level_only and inside:
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name.split(".")[0]) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:  # relative imports stay in their package
                found.append((child.lineno, child.module.split(".")[0]))
            elif isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant):
                name = getattr(child.func, "attr", getattr(child.func, "id", ""))
                if name in ("import_module", "__import__") and isinstance(child.args[0].value, str):
                    found.append((child.lineno, child.args[0].value.split(".")[0]))
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def violations(path, allowed=None, forbidden=MACHINE_ROOM, module_level_only=False):
    """'file:line imports module' for each import of `path` that is forbidden (or, given `allowed`, not allowed)."""
    found = imports(path.read_text(), module_level_only)
    bad = [(line, m) for line, m in found if (m not in allowed if allowed is not None else m in forbidden)]
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{where}:{line} imports {m}" for line, m in bad]


def test_the_reader_finds_imports_everywhere():
    source = ("import os\nimport hf\nfrom benchmarks.bench_train import best_of\n"
              "def load():\n    import transformers\n    return importlib.import_module('hf_tokenizer')\n"
              "class Door:\n    from reproduce import run\n")
    assert imports(source) == [(1, "os"), (2, "hf"), (3, "benchmarks"), (5, "transformers"), (6, "hf_tokenizer"),
                               (8, "reproduce")]
    # a function body runs only when called: that is where a door may open onto the machine room
    assert imports(source, module_level_only=True) == [(1, "os"), (2, "hf"), (3, "benchmarks"), (8, "reproduce")]
    assert imports("from . import synth\nfrom data.answers import grade\n") == [(2, "data")]


def test_the_rule_flags_a_core_file_that_breaks_it(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import torch\n\ndef tokenizer_of(path):\n    from hf import load_tokenizer_of\n"
                    "    return load_tokenizer_of(path)\n")
    assert violations(path) == ["probe.py:4 imports hf"]  # a core file may not do this
    assert violations(path, module_level_only=True) == []  # a door may
    assert violations(path, allowed={"torch"}) == ["probe.py:4 imports hf"]  # compute.py may not


@pytest.mark.parametrize("path", core_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_teaching_core_never_imports_the_machine_room(path):
    assert violations(path) == []


@pytest.mark.parametrize("name", DOORS)
def test_doors_reach_the_machine_room_only_inside_a_function(name):
    assert violations(ROOT / name, module_level_only=True) == []


def test_compute_stands_on_torch_and_the_standard_library():
    assert violations(ROOT / "compute.py", allowed=COMPUTE_MAY_IMPORT) == []


def test_teaching_path_fits_its_line_budget():
    counts = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in core_paths()}
    total = sum(counts.values())
    assert total <= TEACHING_PATH_BUDGET, f"{total} lines > {TEACHING_PATH_BUDGET}: {counts}"
