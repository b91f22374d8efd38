"""
Rebuilds data/tokenizer.tiktoken, the committed tokenizer of the built-in task:

    python -m data.make_tokenizer

511 merges-and-bytes ranks plus end-of-text = 512 tokens, trained on the prompts and reference chains of
20,000 generated training problems (seed 0). The task's words saturate at about 820 ranks, so 512 keeps
common words whole while the embedding stays small; numbers are always single digits (tokenizer.PATTERN).
tests/test_tokenizer_file.py checks that this script reproduces the committed file exactly.
"""

from pathlib import Path

from data.dataset import format_prompt
from data.synth import make_split
from tokenizer import save_ranks, train_bpe

VOCAB_SIZE = 511  # ranks; the model's vocabulary adds end-of-text
PATH = Path(__file__).resolve().parent / "tokenizer.tiktoken"


def training_text(n=20_000, seed=0):
    return "\n\n".join(format_prompt(ex["question"]) + ex["answer"] for ex in make_split(n, seed))


def build(path=PATH):
    ranks = train_bpe(training_text(), VOCAB_SIZE)
    save_ranks(ranks, str(path))
    return ranks


if __name__ == "__main__":
    build()
    print(f"wrote {PATH}")
