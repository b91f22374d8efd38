"""The class notebook runs top to bottom (in miniature: NANOAFT_FAST=1) with the project's own functions."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "aft_walkthrough.ipynb"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOAFT_FAST", "1")
    monkeypatch.setenv("NANOAFT_OUT", str(tmp_path))
    monkeypatch.chdir(NOTEBOOK.parent)
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    namespace = {}
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[cell {i}]", "exec"), namespace)
    assert 0.0 <= namespace["vft_history"]["test"]["accuracy"] <= 1.0
    assert set(namespace["align_history"]["metrics"]) == {"vft", "aligned"}
    assert (tmp_path / "aft" / "checkpoint" / "model.safetensors").is_file()
