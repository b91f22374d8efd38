"""vft_curve.py: the gain-per-doubling verdict on known numbers, and a tiny curve that resumes."""

import json

import pytest

import vft_curve
from configurator import UserError
from tests.test_train_sft import tiny_config


def records(pairs):
    return [{"step": s, "accuracy": a, "val_loss": 1.0} for s, a in pairs]


def test_gain_is_points_per_doubling():
    gains = vft_curve.gains_per_doubling(records([(100, 0.10), (400, 0.20)]))  # 10 points over two doublings
    assert gains == [(100, 400, pytest.approx(5.0))]


@pytest.mark.parametrize("curve, expected", [
    ([(100, 0.10), (200, 0.20), (400, 0.25), (800, 0.255), (1600, 0.26)], 400),  # +0.5 points per doubling from 400
    ([(100, 0.10), (200, 0.20), (400, 0.205), (800, 0.25)], None),  # flat once, then learning again: no plateau
    ([(100, 0.30), (200, 0.29)], 100),                              # a loss is no gain
    ([(100, 0.30)], None),
])
def test_plateau_is_where_every_later_doubling_gains_under_a_point(curve, expected):
    assert vft_curve.plateau_step(records(curve), 1.0) == expected
    text = vft_curve.verdict(records(curve), 1.0)
    assert (f"plateau from step {expected}" in text) if expected else ("no" in text.split(":")[0])


def test_bad_steps_are_refused(tmp_path):
    for steps in ("", "4,2", "0,2", "a"):
        with pytest.raises(UserError, match="--steps"):
            vft_curve.run(vft_curve.Config(steps=steps, out_dir=str(tmp_path / "c")))


def test_more_validation_questions_than_the_split_are_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="validation split has only"):
        vft_curve.run(vft_curve.Config(steps="2", out_dir=str(tmp_path / "c"), val_questions=10_000),
                      base=tiny_config(tmp_path))
    assert not (tmp_path / "c").exists()


def test_tiny_curve_is_written_and_resumes(tmp_path, capsys):
    base = tiny_config(tmp_path, warmup_steps=1)
    cfg = vft_curve.Config(steps="2,4", out_dir=str(tmp_path / "curve"), val_questions=3, val_examples=4)
    first = vft_curve.run(cfg, base=base)
    saved = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [r["step"] for r in saved["records"]] == [2, 4] == [r["step"] for r in first]
    assert all(0 <= r["accuracy"] <= 1 and r["val_loss"] > 0 and r["n_questions"] == 3 for r in first)
    assert "gain per doubling" in capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "curve" / "vft_curve.png").is_file()
    except ImportError:
        pass
    # a rerun trains and measures nothing again
    assert vft_curve.run(cfg, base=base) == first
    assert "training" not in capsys.readouterr().out
    # a measurement lost after its training (an interrupted run): measured from the checkpoint, not retrained
    saved["records"] = saved["records"][:1]
    (tmp_path / "curve" / "curve.json").write_text(json.dumps(saved))
    assert vft_curve.run(cfg, base=base) == first
    out = capsys.readouterr().out
    assert "training" not in out and "step 4: val accuracy" in out
    with pytest.raises(UserError, match="other settings"):
        vft_curve.run(vft_curve.Config(steps="2,4", out_dir=cfg.out_dir, val_questions=2, val_examples=4), base=base)


def test_separate_runs_each_length_on_its_own_schedule(tmp_path):
    base = tiny_config(tmp_path, warmup_steps=1)
    cfg = vft_curve.Config(steps="2,4", out_dir=str(tmp_path / "curve"), val_questions=2, val_examples=4,
                           separate=True)
    vft_curve.run(cfg, base=base)
    assert {p.name for p in (tmp_path / "curve").iterdir()} >= {"run_2", "run_4", "curve.json"}
    curve = json.loads((tmp_path / "curve" / "curve.json").read_text())["records"]

    # --compare measures finished runs on the same validation questions: run_4 again gives its own record
    compared = vft_curve.run(vft_curve.replace(cfg, compare=str(tmp_path / "curve" / "run_4")), base=base)
    saved = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert compared == curve and saved["compared"][str(tmp_path / "curve" / "run_4")] == curve[-1]
    with pytest.raises(UserError, match="--compare: .* holds no finished run"):
        vft_curve.run(vft_curve.replace(cfg, compare=str(tmp_path / "nowhere")), base=base)
    with pytest.raises(UserError, match="another task"):  # another task: its validation questions differ
        other = vft_curve.replace(cfg, out_dir=str(tmp_path / "other"), compare=str(tmp_path / "curve" / "run_4"))
        vft_curve.run(other, base=vft_curve.replace(base, max_number=12))
    assert not (tmp_path / "other" / "run_2").exists()  # refused before any training
