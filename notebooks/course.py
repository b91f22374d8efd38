"""
What every lesson notebook shares, kept out of the lessons themselves.

- The repository on sys.path, so `import model` works from notebooks/ or from the repository root.
- The ONE hidden setting: NANOAFT_SMALL=1 (set by tests/test_notebooks.py) makes every lesson run in
  miniature. A lesson states its sizes once, in its settings cell: `size(full=800, small=3)`.
- `OUT`: where a lesson writes its runs (out/notebooks, or NANOAFT_OUT).
- `check(...)`: what an exercise's checker prints: right, or wrong and why.

Refresh the saved outputs of every notebook (full size, a real kernel): `python notebooks/run_notebooks.py`.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMALL = os.environ.get("NANOAFT_SMALL") == "1"
OUT = Path(os.environ.get("NANOAFT_OUT", ROOT / "out" / "notebooks"))
ARTEFACTS = ROOT / "notebooks" / "artefacts"


def size(full, small):
    """The lesson's size: `full` normally, `small` under the test's miniature setting."""
    return small if SMALL else full


def check(ok, right, wrong):
    """An exercise's verdict: prints 'right: ...' or 'wrong: ...' and returns ok (so a test can assert it)."""
    print(("right: " + right) if ok else ("wrong: " + wrong))
    return bool(ok)
