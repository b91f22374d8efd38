"""The lesson notebooks: each runs top to bottom in miniature (NANOAFT_SMALL=1, the one hidden setting) with the
project's own code, reads without running (saved outputs, at least one figure, equations), ends with exercises whose
checkers accept the kept-apart solutions and refuse a wrong answer."""

import importlib.util
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def cells(path, kind):
    return [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == kind]


def test_there_is_a_course():
    assert len(LESSONS) >= 4, [p.name for p in LESSONS]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_reads_without_running(path):
    text = "\n".join("".join(cell["source"]) for cell in cells(path, "markdown"))
    assert "$$" in text or "$" in text, "no equation"
    assert "docs/method.md" in text, "the equations cite the method doc"
    assert "Exercise" in text, "no exercises"
    code = cells(path, "code")
    assert code and all(cell.get("execution_count") for cell in code), "run python notebooks/run_notebooks.py"
    outputs = [output for cell in code for output in cell.get("outputs", [])]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no saved figure"
    assert not any(output.get("output_type") == "error" for output in outputs), "a saved output is an error"
    sources = "\n".join("".join(cell["source"]) for cell in code)
    assert "SMALL" not in sources and "NANOAFT_" not in sources, "test switches belong in course.py"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_top_to_bottom_in_miniature(path, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("NANOAFT_SMALL", "1")
    monkeypatch.setenv("NANOAFT_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    import matplotlib.pyplot as plt
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells(path, "code")):
        exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
        plt.close("all")


@pytest.mark.parametrize("path", sorted((NOTEBOOKS / "solutions").glob("*.py")), ids=lambda p: p.stem)
def test_exercise_checkers_accept_the_solutions_and_refuse_wrong_answers(path, monkeypatch, capsys):
    monkeypatch.setenv("NANOAFT_SMALL", "1")
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    right, wrong = module.verify()  # lists of checker verdicts: the solutions', and deliberately wrong answers'
    assert right and all(right), capsys.readouterr().out
    assert wrong and not any(wrong), capsys.readouterr().out
