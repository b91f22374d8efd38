"""GSM8K end to end from a Hugging Face directory: a tiny random LLaMA-style model written with save_pretrained
(in shards) and a byte-level BPE tokenizer.json trained here by the `tokenizers` library, with a begin-of-text
token like Llama-3's. Every stage opens it through checkpoint.py's loader (the door to the conversion). VFT
(--init_from, bf16 autocast, stopped and resumed), candidates, alignment, evaluation and export run on a GSM8K
slice; the checkpoints must carry the tokenizer, and the export must load with the same logits. Then the
one-line errors of candidates.py and evaluate.py for bad candidate files and settings."""

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import candidates as cands
import train_align
import train_sft
from checkpoint import find_checkpoint, fingerprints, load_model_and_tokenizer, load_tokenizer_of
from compute import autocast
from configurator import UserError
from data.dataset import format_prompt, run_task
from evaluate import Config as EvalConfig
from evaluate import run as evaluate
from hf import ExportConfig, export, save_pretrained
from model import GPT, ModelConfig
from sequences import encode_pair, encode_prompt, score_pairs
from tokenizer import TOKENIZER_FILES

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
N_TRAIN = 560  # data.dataset.load_task holds the last 500 training records out for validation
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
HANDWRITTEN = [  # GSM8K's format, for a checkout without the data: reasoning with <<a*b=c>> annotations, "#### N"
    ("Tom has 3 boxes of 12 pencils. He gives away 10 pencils. How many pencils does he have left?",
     "Tom has 3*12=<<3*12=36>>36 pencils.\nHe has 36-10=<<36-10=26>>26 pencils left.\n#### 26"),
    ("A baker makes 48 muffins and sells half of them in the morning. How many muffins are left?",
     "He sells 48/2=<<48/2=24>>24 muffins.\nSo 48-24=<<48-24=24>>24 muffins are left.\n#### 24"),
    ("Mia reads 15 pages a day for 6 days, then 20 pages on the seventh day. How many pages does she read?",
     "In 6 days she reads 15*6=<<15*6=90>>90 pages.\nIn all she reads 90+20=<<90+20=110>>110 pages.\n#### 110"),
    ("A shirt costs $25 and a hat costs $8 less than the shirt. What do both cost together?",
     "The hat costs 25-8=$<<25-8=17>>17.\nTogether they cost 25+17=$<<25+17=42>>42.\n#### 42"),
    ("There are 5 rows of 9 chairs and 7 more chairs at the back. How many chairs are there?",
     "The rows hold 5*9=<<5*9=45>>45 chairs.\nThere are 45+7=<<45+7=52>>52 chairs.\n#### 52"),
    ("Sam saves $4 every week. How many weeks does he need to save $60?",
     "He needs 60/4=<<60/4=15>>15 weeks.\n#### 15"),
    ("A farm has 14 cows and twice as many sheep. How many animals are there in all?",
     "There are 14*2=<<14*2=28>>28 sheep.\nThere are 14+28=<<14+28=42>>42 animals.\n#### 42"),
    ("Lena buys 3 notebooks at $2 each and a pen for $1.50. How much does she spend?",
     "The notebooks cost 3*2=$<<3*2=6>>6.\nShe spends 6+1.5=$<<6+1.5=7.5>>7.5.\n#### 7.5"),
    ("A train travels 60 miles per hour for 3 hours. How far does it go?",
     "It travels 60*3=<<60*3=180>>180 miles.\n#### 180"),
    ("Ava had 50 stickers. She gave 12 to her sister and 9 to her friend. How many are left?",
     "She gave away 12+9=<<12+9=21>>21 stickers.\nShe has 50-21=<<50-21=29>>29 left.\n#### 29"),
    ("A class of 28 students splits into teams of 4. How many teams are there?",
     "There are 28/4=<<28/4=7>>7 teams.\n#### 7"),
    ("John runs 2 miles each morning and 3 miles each evening. How far does he run in 5 days?",
     "Each day he runs 2+3=<<2+3=5>>5 miles.\nIn 5 days he runs 5*5=<<5*5=25>>25 miles.\n#### 25"),
]


def write_gsm8k_slice(directory):
    """train.jsonl and test.jsonl: the first records of GSM8K when the data is here, else the handwritten ones
    repeated. Returns the training records."""
    directory.mkdir()
    if (GSM8K / "train.jsonl").is_file():
        train = (GSM8K / "train.jsonl").read_text().splitlines()[:N_TRAIN]
        test = (GSM8K / "test.jsonl").read_text().splitlines()[:20]
    else:
        lines = [json.dumps({"question": q, "answer": a}) for q, a in HANDWRITTEN]
        train, test = (lines * (N_TRAIN // len(lines) + 1))[:N_TRAIN], lines
    (directory / "train.jsonl").write_text("\n".join(train) + "\n")
    (directory / "test.jsonl").write_text("\n".join(test) + "\n")
    return [json.loads(line) for line in train]


def train_tokenizer(texts, directory):
    """A SmolLM-style byte-level BPE (digits apart) whose post-processor puts BOS in front of every text."""
    tokenizers = pytest.importorskip("tokenizers")  # a development dependency, as in test_hf_tokenizer.py
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    return tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsm8k")
    (root / "hf").mkdir()
    records = write_gsm8k_slice(root / "data")
    reference = train_tokenizer([r["question"] + "\n" + r["answer"] for r in records], root / "hf")
    # a context in which the longest training pairs do not fit (they are left out), but every prompt does
    lengths = [len(reference.encode(format_prompt(r["question"])).ids)
               + len(reference.encode(r["answer"], add_special_tokens=False).ids) + 1 for r in records[:N_TRAIN - 500]]
    block_size = min(320, max(lengths) - 1)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=1024, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                            tie_embeddings=False))
    save_pretrained(model, root / "hf", max_shard_size=200_000)
    return root, reference


def test_hf_directory_tokenizer_and_fingerprint(setup):
    root, reference = setup
    enc = load_tokenizer_of(root / "hf")
    text = "Question: Natalia sold 48/2 = <<48/2=24>>24 clips.\nAnswer:\n"
    assert encode_prompt(enc, text) == reference.encode(text).ids and reference.encode(text).ids[0] == 0
    prompt, completion = encode_pair(enc, "How many?", "#### 3")
    assert prompt[0] == enc.bos_token_id == 0 and completion[-1] == enc.eot_token == 1
    # candidates sampled straight from a sharded Hugging Face model: every shard is part of the fingerprint
    copy = Path(shutil.copytree(root / "hf", root / "hf-copy"))
    shards = sorted(copy.glob("model-*.safetensors"))
    assert (copy / "model.safetensors.index.json").is_file() and len(shards) > 1
    last = bytearray(shards[-1].read_bytes())
    last[-1] ^= 1  # one bit of the last tensor of the last shard
    shards[-1].write_bytes(bytes(last))
    before, after = fingerprints(root / "hf"), fingerprints(copy)
    assert before["model"] != after["model"] and before["tokenizer"] == after["tokenizer"]


def test_vft_candidates_alignment_evaluation_and_export(setup, capsys):
    root, reference = setup
    vft = train_sft.Config(dataset="gsm8k", data_dir=str(root / "data"), init_from=str(root / "hf"),
                           out_dir=str(root / "vft"), batch_size=2, max_steps=4, warmup_steps=1, learning_rate=1e-3,
                           log_every=1, eval_every=0, eval_examples=2, save_every=2, test_questions=2,
                           max_new_tokens=8, dtype="bfloat16", stop_after=2)
    train_sft.train(vft)
    history = train_sft.train(replace(vft, stop_after=0, resume=True))
    printed = capsys.readouterr().out
    fit, total = map(int, re.search(r"(\d+) of (\d+) training pairs fit", printed).groups())
    assert 0 < fit < total  # the longest pairs do not fit in the context and are left out
    assert [r["step"] for r in history["train"]] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in history["train"]) and 0 <= history["test"]["accuracy"] <= 1
    # the checkpoint carries the tokenizer it was trained with, converted into nanoAFT's own format
    assert set(TOKENIZER_FILES) <= {p.name for p in (root / "vft" / "checkpoint").iterdir()}

    groups, header = cands.build(cands.Config(ckpt=str(root / "vft"), n_questions=4, k=3, temperature=1.0,
                                              max_new_tokens=8))
    assert 1 <= len(groups) <= 4 and header["summary"]["cut_share"] > 0.5  # 8 tokens rarely finish a chain
    assert (header["config"]["dataset"], header["config"]["data_dir"]) == ("gsm8k", str(root / "data"))  # the run's
    assert all(c["n_tokens"] == len(c["ids"]) and math.isfinite(c["sum_logp"]) for g in groups for c in g["candidates"])
    align = train_align.train(train_align.Config(loss="aft_rank", vft=str(root / "vft"), batch_size=2, max_steps=2,
                                                 log_every=1, test_questions=2, k=2, k_questions=2, max_new_tokens=8,
                                                 out_dir=str(root / "align")))
    assert all(math.isfinite(r["loss"]) for r in align["train"])
    # the aligned run records the VFT run's task, so evaluate.py asks it GSM8K's test questions, not the built-in ones
    first_test = json.loads((root / "data" / "test.jsonl").read_text().splitlines()[0])
    assert run_task(find_checkpoint(root / "align"))["test"][0] == first_test
    metrics = evaluate(EvalConfig(ckpt=str(root / "align"), n_questions=2, k=2, k_questions=2, max_new_tokens=8))
    assert math.isfinite(metrics["gold_ppl"]) and metrics["gold_ppl"] > 1 and 0 <= metrics["t_acc"] <= 1
    assert (root / "align" / "eval_test.json").is_file()

    # the aligned checkpoint reads back with the Hugging Face tokenizer it was started from
    text = "Question: A farm has 14 cows and twice as many sheep.\nAnswer:\n"
    assert encode_prompt(load_tokenizer_of(root / "align"), text) == reference.encode(text).ids
    # python hf.py --ckpt=out/align --out=DIR: a Hugging Face directory with the same logits and tokenizer
    export(ExportConfig(ckpt=str(root / "align"), out=str(root / "exported"), source=str(root / "hf")))
    assert "nanoaft" not in (root / "exported" / "config.json").read_text()
    idx = torch.tensor([reference.encode(text).ids])
    with torch.no_grad():
        expected, _ = load_model_and_tokenizer(root / "align")[0].eval()(idx)
        got, _ = load_model_and_tokenizer(root / "exported")[0].eval()(idx)  # converted back through the door
    assert torch.equal(got, expected)
    assert encode_prompt(load_tokenizer_of(root / "exported"), text) == reference.encode(text).ids


def test_scoring_batches_stay_within_the_logits_budget():
    """A 50k-150k vocabulary makes full logits huge: score_pairs cuts batches by rows x longest x vocabulary,
    with the same scores as one pair at a time."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=100, n_layer=1, n_head=2, n_embd=32, block_size=64)).eval()
    lengths = [(3, 9), (1, 1), (7, 20), (2, 5), (5, 12)]
    pairs = [(torch.randint(0, 100, (p,)).tolist(), torch.randint(0, 100, (c,)).tolist()) for p, c in lengths]
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        alone = [score_pairs(model, [pair], 0) for pair in pairs]
        calls.clear()
        total, count = score_pairs(model, pairs, 0, batch_size=4, max_logits=2 * 26 * 100)
    # pairs of 12 and 2 tokens: 2 x 12 x 100 fits; with the 27-token one 3 x 27 x 100 would not, and even
    # 2 x 27 x 100 > 5200, so it goes alone; then the 7- and 17-token pairs together (inputs are one shorter)
    assert calls == [(2, 11), (1, 26), (2, 16)]
    assert torch.allclose(total, torch.cat([s for s, _ in alone]), atol=1e-5)
    assert count.tolist() == [c for _, c in lengths]


def test_bfloat16_autocast_keeps_weights_gradients_and_log_probs_float32():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=100, n_layer=1, n_head=2, n_embd=32, block_size=64))
    pairs = [([1, 2, 3], [4, 5, 6, 7]), ([8], [9, 10])]

    def nll(model):  # the mean over pairs of -s(c), as VFT trains
        total, count = score_pairs(model, pairs, 0)
        return -(total / count).mean()

    exact = nll(model)
    with autocast("cpu", "bfloat16"):
        logits, _ = model(torch.tensor([[1, 2, 3]]))
        loss = nll(model)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # the log-probs were upcast
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
    assert abs(loss.item() - exact.item()) < 0.02 * exact.item() and loss.item() != exact.item()
    with pytest.raises(UserError, match="--dtype=float16"):
        autocast("cpu", "float16")


# -----------------------------------------------------------------------------
# one clear line for a bad candidate file or setting, before any work

def candidate_file(tmp_path, monkeypatch):
    """The lines of a valid candidate file for a model whose fingerprints are stubbed (only the file is on trial)."""
    stamp = {"model": "m" * 16, "tokenizer": "t" * 16}
    monkeypatch.setattr(cands, "fingerprints", lambda path: stamp)
    candidate = {"ids": [5, 1], "text": "#### 3", "correct": True, "grade": 1.0, "gold": True, "sum_logp": -1.5,
                 "n_tokens": 2}
    group = {"question": "How many?", "answer": "#### 3", "candidates": [candidate], "samples_correct": 0,
             "samples": 2, "samples_cut": 1}
    return tmp_path / "model", [json.dumps({"fingerprint": stamp}), json.dumps(group), json.dumps(group)]


def test_candidate_file_is_checked_whole_with_the_line_of_its_first_bad_record(tmp_path, monkeypatch):
    model_dir, (header, group_line, _) = candidate_file(tmp_path, monkeypatch)
    group = json.loads(group_line)
    path = tmp_path / "candidates.jsonl"
    path.write_text(f"{header}\n{group_line}\n{group_line}\n")
    assert len(cands.load_groups(path, model_dir)[0]) == 2
    broken = [([header, group_line, group_line[:-1].encode() + b"\xff}"], ":3: not a line of JSON in UTF-8"),
              ([header], ": a header and no groups"),
              ([group_line], ":1: no fingerprint header"),
              ([header, json.dumps({k: v for k, v in group.items() if k != "samples_cut"})], ":2: 'samples_cut'"),
              ([header, json.dumps({**group, "question": 3})], ":2: 'question' is missing or not a finite str"),
              ([header, group_line.replace("-1.5", "NaN")], ":2: candidate 0: 'sum_logp'"),
              ([header, group_line.replace("[5, 1]", '["5"]')], ":2: candidate 0: 'ids'"),
              ([header, json.dumps({**group, "candidates": []})], ":2: a group without candidates")]
    for lines, message in broken:
        path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
        with pytest.raises(UserError) as error:
            cands.load_groups(path, model_dir)
        assert str(error.value).startswith(str(path)) and message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("setting, message", [
    (dict(split="train"), "--split=train"), (dict(k=0), "--k=0"), (dict(n_questions=0), "--n_questions=0"),
    (dict(temperature=float("nan")), "--temperature=nan"), (dict(temperature=-1.0), "--temperature=-1.0"),
    (dict(max_new_tokens=0), "--max_new_tokens=0"), (dict(batch_size=0), "--batch_size=0"),
    (dict(dtype="float16"), "--dtype=float16"), (dict(out="/proc/nanoaft/eval.json"), "--out=.*cannot write in /proc")])
def test_evaluate_refuses_a_bad_setting_before_loading_anything(tmp_path, setting, message):
    # an output under a missing directory is fine (it is created), so the unwritable one is under /proc (even root)
    with pytest.raises(UserError, match=message):
        evaluate(EvalConfig(ckpt=str(tmp_path), **setting))  # an existing directory, with no model in it


@pytest.mark.parametrize("setting, message", [
    (dict(k=0), "--k=0"), (dict(n_questions=-1), "--n_questions=-1"), (dict(temperature=float("inf")), "--temp"),
    (dict(max_new_tokens=0), "--max_new_tokens=0"), (dict(out="/proc/nanoaft/c.jsonl"), "--out=.*cannot write in")])
def test_candidates_refuses_a_bad_setting_before_loading_anything(tmp_path, setting, message):
    with pytest.raises(UserError, match=message):
        cands.build(cands.Config(ckpt=str(tmp_path), **setting))


def test_a_question_longer_than_the_context_is_one_clear_line():
    from evaluate import complete
    from tokenizer import load_tokenizer
    enc = load_tokenizer(Path(__file__).resolve().parents[1] / "data" / "tokenizer.tiktoken")
    model = GPT(ModelConfig(vocab_size=enc.n_vocab, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(UserError, match="a question of .* tokens leaves no room for an answer"):
        complete(model, enc, ["How many apples? " * 8], max_new_tokens=8)
