"""
The artefacts lessons 02 and 04 start from, in notebooks/artefacts/vft/: a VFT model and its own candidate groups,
small enough to commit (4.7 MB) and regenerated with the project's own functions (exactly for the sampling stage,
see below):

1. VFT: `train_sft.train(train_sft.Config())`, the default run, i.e. `python train_sft.py` on a fresh clone. It
   runs in an empty temporary directory, so its run directory is out/vft there, as on a fresh clone, and its
   trainer.json records the same configuration a fresh `python train_sft.py` writes.
2. Candidates: `candidates.build(candidates.Config(ckpt="out/vft", out="out/vft/candidates.jsonl",
   n_questions=300, k=8))`, i.e. `python candidates.py --n_questions=300` (the first 300 training questions, 8
   chains each at temperature 0.8, the gold chain added as a positive).
3. Copy into notebooks/artefacts/vft/: model.safetensors, config.json, tokenizer.tiktoken, tokenizer_info.json and
   trainer.json of the checkpoint, and candidates.jsonl. The optimizer and RNG states are left out: no lesson
   resumes the VFT run.

Regenerate and check (from the repository root):

    python notebooks/make_artefacts.py                  # train + sample + copy: about 5 minutes on 2 CPU cores
    python notebooks/make_artefacts.py --from=out/vft   # reuse an existing default VFT run: about 1 minute
    python notebooks/make_artefacts.py --check          # regenerate in a temporary directory, compare sha256
    python notebooks/make_artefacts.py --check --from=out/vft   # the same, reusing a default VFT run: 1 minute

--check exits 0 when every regenerated file has the committed file's sha256, 1 otherwise, naming the files that
differ. What is exact, measured on the 2-core development machine (torch 2.13 CPU):

- the sampling stage: `--check --from=out/vft`, from the VFT run the artefacts were copied from, regenerates every
  file byte for byte (the checkpoint's files are copies; candidates.jsonl is resampled and rescored);
- the VFT run is not, across code versions and thread counts: the shipped model was trained by the code one
  commit before RMSNorm's weight moved inside `F.rms_norm` (model.py), a change of float rounding only. The
  current code's default VFT agrees with it to 4 digits of the loss up to step 100 and parts by step 150 (0.8219
  shipped, 0.8216 now; 0.8267 with OMP_NUM_THREADS=1): training amplifies the rounding, and the current code's
  model scores 0.388 test T-Acc where the shipped one scores 0.372 (docs/results.md). A from-scratch `--check`
  therefore reports model.safetensors, trainer.json and candidates.jsonl as different: it is another VFT model
  of the same recipe, and lesson 02's worked example would change with it, so the shipped artefacts stay.

To replace the artefacts (after a change to training or sampling): regenerate, then refresh the lessons' saved
outputs with `python notebooks/run_notebooks.py 02` and `04`, and reread the sentences that quote their numbers.
`--from` must name a run of the default `python train_sft.py` (it is refused otherwise).
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import candidates  # noqa: E402
import train_sft  # noqa: E402
from checkpoint import find_checkpoint  # noqa: E402
from configurator import config_to_dict  # noqa: E402
from data.dataset import run_config  # noqa: E402

ARTEFACTS = HERE / "artefacts" / "vft"
N_QUESTIONS, K = 300, 8  # candidate groups shipped: enough for a histogram and 150 alignment steps of 8 groups
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.tiktoken", "tokenizer_info.json", "trainer.json")
FILES = CHECKPOINT_FILES + ("candidates.jsonl",)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def regenerate(dest, source=None):
    """Write the artefacts into `dest`: train the default VFT run (or copy `source`, a finished one), sample its
    candidate groups and copy FILES. Every path inside the runs is relative to a fresh temporary directory, so
    the files do not depend on where this runs."""
    dest = Path(dest)
    source = find_checkpoint(Path(source).resolve()) if source else None
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            run = Path("out/vft")
            if source:
                saved = run_config(source)
                if saved != config_to_dict(train_sft.Config()):
                    sys.exit(f"--from={source}: not a run of the default `python train_sft.py` (its config differs)")
                shutil.copytree(source, run / "checkpoint")
            else:
                train_sft.train(train_sft.Config())
            candidates.build(candidates.Config(ckpt=str(run), out=str(run / "candidates.jsonl"),
                                               n_questions=N_QUESTIONS, k=K))
            dest.mkdir(parents=True, exist_ok=True)
            for name in CHECKPOINT_FILES:
                shutil.copyfile(run / "checkpoint" / name, dest / name)
            shutil.copyfile(run / "candidates.jsonl", dest / "candidates.jsonl")
        finally:
            os.chdir(cwd)
    for name in FILES:
        print(f"{sha256(dest / name)}  {(dest / name).stat().st_size:>9,d}  {name}")


def check(source=None):
    """Regenerate (from scratch, or from `source`, a default VFT run) and compare with the committed files; returns
    the names that differ."""
    with tempfile.TemporaryDirectory() as tmp:
        regenerate(tmp, source)
        differ = [name for name in FILES
                  if not (ARTEFACTS / name).is_file() or sha256(Path(tmp) / name) != sha256(ARTEFACTS / name)]
    print("artefacts: identical to a fresh regeneration" if not differ else f"artefacts: differ: {', '.join(differ)}")
    return differ


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", default="", help="a finished default VFT run to copy, not retrain")
    parser.add_argument("--check", action="store_true", help="regenerate in a temporary directory and compare")
    args = parser.parse_args()
    if args.check:
        sys.exit(1 if check(args.source or None) else 0)
    regenerate(ARTEFACTS, args.source or None)
