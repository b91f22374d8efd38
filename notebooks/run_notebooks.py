"""
Execute every lesson notebook top to bottom with a real Jupyter kernel and save its outputs and figures in the
notebook file, so it reads on a code host without running:

    pip install -r requirements-notebooks.txt
    python notebooks/run_notebooks.py               # all lessons, full size
    python notebooks/run_notebooks.py 03            # the lessons whose name starts with 03

Each lesson takes at most about 5 minutes on 2 CPU cores. tests/test_notebooks.py runs the same cells in
miniature (NANOAFT_SMALL=1) without a kernel.
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def lessons(prefix=""):
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.ipynb") if p.name.startswith(prefix))


def main(argv):
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        sys.exit("run_notebooks.py needs nbclient, nbformat and ipykernel: pip install -r requirements-notebooks.txt")
    for path in lessons(argv[0] if argv else ""):
        start = time.time()
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=900, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(notebook, path)
        print(f"{path.name}: executed and saved in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
