"""``iqals-fast reproduce`` end to end on a tiny protocol: resumable, reproducible, a complete report."""

import json
import types
from pathlib import Path

import numpy as np
import pytest

import iqals_fast.reproduce as R
from iqals_fast import config
from iqals_fast.cli import main
from iqals_fast.config import PROTOCOLS, STRATEGIES, ReproProtocol


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PROTOCOLS, "small", ReproProtocol("small", 1, 100, 1, 100))


def test_reproduce_writes_the_report_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "--data", "synthetic", "--out", str(out), "--strategies", "1", "2", "3",
                 "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "iqals-fast reproduce --data synthetic" in report and "synthetic-v1" in report
    assert "| 3 | MIX_blur + IQA-LS |" in report and "**blur**: mixing" in report
    for f in ("table2.md", "table2.csv", "figure3.png", "figure4.png", "corruptions.md", "corruptions.csv",
              "calibration.md", "calibration.csv", "reliability.png", "figure4_ssim.png", "corruptions.png"):
        assert (out / f).stat().st_size > 100
    for section in ("## Robustness at the CIFAR-10-C severities", "relative mCE", "## Calibration and confidence",
                    "ρ pooled", "**blur** (IQA-LS minus 0-1 labels, per seed): ECE clean"):
        assert section in report
    ev = json.loads((out / "runs" / "strategy2-seed0" / "eval.json").read_text())
    assert ev["results"]["pristine"]["n"] == 100 and ev["corruptions"]["gaussian_blur-5"]["n"] == 100
    # an eval.json of the first layout is re-evaluated (same accuracies), without retraining
    ev1 = {k: v for k, v in ev.items() if k not in ("eval_version", "corruptions", "pooled")}
    (out / "runs" / "strategy2-seed0" / "eval.json").write_text(json.dumps(ev1))
    # a second call finds every run finished: nothing is retrained, the table is identical
    before = (out / "table2.csv").read_text()
    mtime = (out / "runs" / "strategy1-seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["reproduce", "--data", "synthetic", "--out", str(out), "--strategies", "1", "2", "3",
                 "--no-progress"]) == 0
    assert (out / "runs" / "strategy1-seed0" / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert (out / "table2.csv").read_text() == before
    assert json.loads((out / "runs" / "strategy2-seed0" / "eval.json").read_text())["corruptions"] == ev["corruptions"]


def test_same_seed_reproduces_a_row_exactly(tiny, tmp_path):
    a = R.reproduce("small", data="synthetic", out=tmp_path / "a", strategies=(9,), progress=False)
    b = R.reproduce("small", data="synthetic", out=tmp_path / "b", strategies=(9,), progress=False)
    ea = json.loads((a.parent / "runs" / "strategy9-seed0" / "eval.json").read_text())["results"]
    eb = json.loads((b.parent / "runs" / "strategy9-seed0" / "eval.json").read_text())["results"]
    assert ea == eb


def test_protocols():
    assert PROTOCOLS["paper"].epochs == 2000 and PROTOCOLS["paper"].train_subset is None
    assert R.PROTOCOLS is PROTOCOLS and config.DEFAULT_PROTOCOL in PROTOCOLS  # one definition, in config
    with pytest.raises(ValueError, match="--protocol must be one of"):
        R.reproduce("huge")
    assert len(STRATEGIES) == 9


def test_reproduce_with_another_iqa_measure(tiny, tmp_path):
    """--iqa gmsd: IQA-LS runs go to strategy<N>-seed<S>-gmsd, the report to OUT/iqa-gmsd/; 0-1 label runs are
    the SSIM ones (found finished, not retrained) and the SSIM report files stay as they were."""
    out = tmp_path / "rep"
    args = ["reproduce", "--data", "synthetic", "--out", str(out), "--no-progress", "--strategies"]
    assert main([*args, "1", "2", "3"]) == 0
    ssim_files = {f: (out / f).read_bytes() for f in ("report.md", "table2.csv", "calibration.csv")}
    mtimes = {s: (out / "runs" / f"strategy{s}-seed0" / "checkpoint.pt").stat().st_mtime_ns for s in (1, 2, 3)}
    assert main([*args, "2", "3", "--iqa", "gmsd"]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["strategy1-seed0", "strategy2-seed0", "strategy3-seed0", "strategy3-seed0-gmsd"]
    cfg = json.loads((out / "runs" / "strategy3-seed0-gmsd" / "config.json").read_text())
    assert cfg["iqa"] == "gmsd" and cfg["strategy"] == 3
    assert json.loads((out / "runs" / "strategy3-seed0-gmsd" / "eval.json").read_text())["iqa"] == "gmsd"
    for s, t in mtimes.items():
        assert (out / "runs" / f"strategy{s}-seed0" / "checkpoint.pt").stat().st_mtime_ns == t
    assert {f: (out / f).read_bytes() for f in ssim_files} == ssim_files
    rep = out / "iqa-gmsd"
    report = (rep / "report.md").read_text()
    assert "IQA-LS scored with `gmsd`" in report and "--iqa gmsd" in report
    # strategy 1 was not asked for but is reused (mCE's baseline); strategy 3 is the gmsd run
    assert "| 1 | Pristine |" in report and "| 3 | MIX_blur + IQA-LS |" in report
    assert "| 3 | IQA-LS ssim | 0 |" in report and "| 3 | IQA-LS gmsd | 0 |" in report and "| 2 | 0-1 | 0 |" in report
    assert "| gmsd | " in (rep / "measures.md").read_text()
    for f in ("table2.csv", "figure3.png", "corruptions.md", "calibration.md", "measures.csv"):
        assert (rep / f).stat().st_size > 100
    with pytest.raises(SystemExit):
        main([*args, "3", "--iqa", "lpips"])


# ---------------------------------------------------------------------------------------------------
# The medium protocol and the rule that fixed its length


def _curve(path, epochs=60, step=20, train_acc=0.99, last_third=lambda e: 0.78, every=1):
    """A learning curve of the staircase ``epochs``/``step``: test accuracy rising to 0.78 by 2/3 of the run,
    then ``last_third(epoch)``; ``test_acc`` on every ``every``-th epoch only."""
    sched = config.PAPER.scaled(epochs, None, step)
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": sched.lr_at(e - 1), "train_acc": train_acc * min(1, 0.5 + e / epochs)}
        if e % every == 0:
            row["test_acc"] = last_third(e) if e > 2 * epochs / 3 else 0.5 + 0.28 * e / (2 * epochs / 3)
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_medium_protocol():
    m = PROTOCOLS["medium"]
    assert (m.epochs, m.train_subset, m.lr_step_epochs, m.test_subset, m.curve_every) == (60, None, 20, None, 2)
    sched = config.PAPER.scaled(m.epochs, m.train_subset, m.lr_step_epochs)
    assert [sched.lr_at(e) for e in (0, 19, 20, 39, 40, 59)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert m.epochs <= R.RULE_MAX_EPOCHS and PROTOCOLS["small"].curve_every == 0


def test_protocol_rule_on_synthetic_curves(tmp_path):
    rng = np.random.default_rng(0)
    noise = {e: rng.normal(0, 0.002) for e in range(1, 61)}  # 0.2 points per epoch, about half a binomial SE
    flat = R.protocol_rule(_curve(tmp_path / "flat.jsonl"))
    assert flat.holds is True and abs(flat.rise) < 1e-9 and flat.window == (41, 60) and "holds" in str(flat)
    assert flat.standard_error == pytest.approx(100 * (0.78 * 0.22 / 10_000) ** 0.5)  # 0.41 points
    rising = R.protocol_rule(_curve(tmp_path / "rising.jsonl", last_third=lambda e: 0.78 + 0.001 * (e - 40)))
    assert rising.holds is False and rising.rise == pytest.approx(1.9) and "test accuracy still rising" in str(rising)
    noisy = R.protocol_rule(_curve(tmp_path / "noisy.jsonl", last_third=lambda e: 0.78 + noise[e]))
    assert noisy.holds is True and abs(noisy.rise) < noisy.standard_error
    noisy_rising = R.protocol_rule(_curve(tmp_path / "nr.jsonl", last_third=lambda e: 0.78 + 0.0005 * (e - 40) + noise[e]))
    assert noisy_rising.holds is False and noisy_rising.rise > noisy_rising.standard_error
    slow = R.protocol_rule(_curve(tmp_path / "slow.jsonl", train_acc=0.97))
    assert slow.holds is False and "training accuracy below 98%" in str(slow)
    sparse = R.protocol_rule(_curve(tmp_path / "sparse.jsonl", every=2))  # curve_every 2: test_acc on even epochs
    assert sparse.holds is True and sparse.window == (42, 60)
    # an unfinished curve is undecided; one of another schedule is refused
    part = tmp_path / "part.jsonl"
    part.write_text("".join(_curve(tmp_path / "full.jsonl").read_text().splitlines(True)[:35]))
    assert R.protocol_rule(part).holds is None and "undecided: the run has 25 epochs to go" in str(R.protocol_rule(part))
    with pytest.raises(ValueError, match="epoch 11 was trained at lr 0.1, not at the 30-epoch schedule's 0.01"):
        R.protocol_rule(tmp_path / "flat.jsonl", ReproProtocol("x", 30, None, 10, None))
    with pytest.raises(ValueError, match="1-150 epochs, got 200"):
        R.protocol_rule(tmp_path / "flat.jsonl", ReproProtocol("x", 200, None, 70, None))
    with pytest.raises(ValueError, match="not a learning curve"):
        R.protocol_rule(tmp_path / "missing.jsonl")


@pytest.mark.skipif(not R.PROTOCOL_EVIDENCE.is_file(), reason="the committed protocol run is absent")
def test_protocol_rule_on_its_evidence():
    """The committed curve of strategy 1 seed 0 (growing while the run continues): undecided until epoch 60."""
    v = R.protocol_rule()
    rows = R.PROTOCOL_EVIDENCE.read_text().splitlines()
    assert v.epochs == 60 and v.logged == min(60, json.loads(rows[-1])["epoch"])
    assert (v.holds is None) == (v.logged < 60) and v.train_acc >= 0.98  # memorised already at epoch 33


def test_reproduce_medium_end_to_end(monkeypatch, tmp_path):
    """--protocol medium (shrunk: 9 epochs on 100 images, lr x0.1 every 3, the curve every epoch): trains, logs the
    curve into metrics.jsonl, reports; the rule reads the run's metrics.jsonl and decides."""
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    shrunk = ReproProtocol("medium", 9, 100, 3, 100, curve_every=1)
    monkeypatch.setitem(PROTOCOLS, "medium", shrunk)
    out = tmp_path / "rep"
    assert main(["reproduce", "--protocol", "medium", "--data", "synthetic", "--out", str(out), "--strategies", "1",
                 "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "protocol `medium`" in report and "9 epochs" in report and "(79.40, " in report
    assert "## Training curves" in report and "| strategy1-seed0 | 9 | 9 |" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    run = out / "runs" / "strategy1-seed0"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 10)) and all(0 <= r["test_acc"] <= 1 for r in rows)
    assert json.loads((run / "config.json").read_text())["curve_every"] == 1
    v = R.protocol_rule(run, shrunk, n_test=100)
    assert v.holds is not None and v.window == (7, 9) and v.train_acc == rows[-1]["train_acc"]


def test_reproduce_finetune_adds_rows_of_their_own(tiny, tmp_path):
    """--finetune: strategy 3 again, from strategy 2's stage-1 weights (strategy 2 trained although not asked for),
    as row `3 ft`; the claims compare it with 0-1 labels; a second call retrains nothing; --no-paper hides the paper."""
    from iqals_fast.config import ReproProtocol as P

    PROTOCOLS["small"] = P("small", 2, 100, 1, 100)  # (tiny's monkeypatch restores it) two lr stages: 1 + 1 epochs
    out = tmp_path / "rep"
    args = ["reproduce", "--data", "synthetic", "--out", str(out), "--strategies", "1", "3", "--finetune", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["strategy1-seed0", "strategy2-seed0", "strategy3-seed0",
                                                                "strategy3-seed0-finetune"]
    ft = out / "runs" / "strategy3-seed0-finetune"
    assert [json.loads(x)["epoch"] for x in (ft / "metrics.jsonl").read_text().splitlines()] == [2]
    assert json.loads((ft / "config.json").read_text())["finetune_from"] == str(out / "runs" / "strategy2-seed0")
    md = (out / "table2.md").read_text()
    assert "| 3 ft | MIX_blur + IQA-LS, fine-tuned from 2 |" in md and "| 3 | MIX_blur + IQA-LS |" in md
    report = (out / "report.md").read_text()
    assert "**blur**: IQA-LS fine-tuned from 0-1 labels beats 0-1 labels" in report and "(79.80, " in report
    mtime = (ft / "checkpoint.pt").stat().st_mtime_ns
    assert main([*args, "--no-paper"]) == 0
    assert (ft / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert "(79.80, " not in (out / "report.md").read_text() and "| 3 ft |" in (out / "report.md").read_text()


def test_report_only_trains_nothing_and_lists_the_missing_runs(tiny, tmp_path, capsys):
    """--report-only: the report from the finished runs (one committed without its checkpoint counts; an unfinished
    one does not), the others listed; nothing trained; none finished is a clear error naming OUT/runs."""
    out = tmp_path / "rep"
    assert main(["reproduce", "--data", "synthetic", "--out", str(out), "--strategies", "1", "8", "--no-progress"]) == 0
    (out / "runs" / "strategy8-seed0" / "checkpoint.pt").unlink()  # as committed: config, metrics, eval
    (out / "runs" / "strategy8-seed0" / "eval.json").unlink()
    args = ["reproduce", "--data", "synthetic", "--out", str(out), "--strategies", "1", "8", "9", "--report-only",
            "--no-progress"]
    assert main(args) == 0  # strategy 8 has no eval.json and no checkpoint: not finished, not evaluable
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["strategy1-seed0", "strategy8-seed0"]
    report = (out / "report.md").read_text()
    assert "**Incomplete**: 2 of the runs asked for" in report and "`strategy8-seed0`, `strategy9-seed0`" in report
    assert "| 1 | Pristine |" in report and "| 9 |" not in report
    assert main(["reproduce", "--data", "synthetic", "--out", str(tmp_path / "none"), "--report-only",
                 "--no-progress"]) == 2
    assert f"none of the runs asked for is finished in {tmp_path / 'none' / 'runs'}" in capsys.readouterr().err


def test_compare_sets_another_protocols_claims_beside(tiny, tmp_path, capsys):
    """--compare DIR: DIR's evaluated runs, their protocol named from config.json, in a section of the report; a
    directory without evaluated runs is refused, naming it, before any training."""
    small = tmp_path / "small"
    assert main(["reproduce", "--data", "synthetic", "--out", str(small), "--strategies", "1", "8", "9",
                 "--no-progress"]) == 0
    name, runs = R.compared_runs(small)
    assert name == "small" and [r.name for r in runs] == ["strategy1-seed0", "strategy8-seed0", "strategy9-seed0"]
    out = tmp_path / "other"
    assert main(["reproduce", "--data", "synthetic", "--out", str(out), "--strategies", "1", "8", "9", "--seeds", "1",
                 "--compare", str(small), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "## What `small` said that `small` confirms or overturns" in report
    assert "claim quantities `small` measured" in report and "## Verdict: IQA-LS against 0-1 labels" in report
    assert main(["reproduce", "--data", "synthetic", "--out", str(tmp_path / "x"), "--compare", str(tmp_path / "empty"),
                 "--no-progress"]) == 2
    assert f"--compare {tmp_path / 'empty'}: no evaluated runs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_medium_report_states_its_rule():
    text = R.rule_text(PROTOCOLS["medium"], "nowhere")
    if not R.PROTOCOL_EVIDENCE.is_file():
        pytest.skip("the protocol run's evidence (results/medium/protocol-run) is absent")
    assert "decided on strategy 1 seed 0 alone" in text and "holds: the schedule is long enough" in text
    assert R.rule_text(PROTOCOLS["small"], "nowhere") == ""


MEDIUM = Path(__file__).resolve().parents[1] / "results" / "medium"
MEDIUM_COMMAND = ["reproduce", "--protocol", "medium", "--data", "../shared/data/cifar10-jpeg.tar.gz", "--out",
                  "results/medium", "--seeds", "0", "1", "--finetune", "--report-only", "--compare", "results"]
"""How results/medium/report.md is written (README, results/medium/README.md)."""


def _without_header(text: str) -> list[str]:
    """report.md without the lines that name the machine, versions, data path, command and times."""
    drop = ("Produced by", "| machine", "| versions", "| data", "| training time")
    return [line for line in text.splitlines() if not line.startswith(drop)]


def test_the_committed_medium_report_regenerates(monkeypatch, tmp_path):
    """``MEDIUM_COMMAND`` on the committed medium runs (config.json, metrics.jsonl, eval.json: what a clone holds):
    report.md as committed but for its header's machine, versions and times, and Table 2 byte for byte. The
    dataset is not needed (every run is evaluated); Figure 4, which draws from it, is left out."""
    if not (MEDIUM / "report.md").is_file():
        pytest.skip("results/medium/report.md is absent")
    import shutil

    for run in (MEDIUM / "runs").iterdir():
        if (run / "eval.json").is_file():
            (tmp_path / "runs" / run.name).mkdir(parents=True)
            for f in ("config.json", "metrics.jsonl", "eval.json"):
                shutil.copy(run / f, tmp_path / "runs" / run.name / f)
    monkeypatch.setattr(R, "load", lambda data: types.SimpleNamespace(source=data, checksum="sha"))
    monkeypatch.setattr(R, "figure4", lambda *a, **k: None)
    i = MEDIUM_COMMAND.index("--out")
    cmd = [*MEDIUM_COMMAND[:i + 1], str(tmp_path), *MEDIUM_COMMAND[i + 2:]]
    cmd[cmd.index("--compare") + 1] = str(MEDIUM.parent)
    assert main([*cmd, "--no-progress"]) == 0
    assert _without_header((tmp_path / "report.md").read_text()) == _without_header((MEDIUM / "report.md").read_text())
    for f in ("table2.md", "table2.csv"):
        assert (tmp_path / f).read_bytes() == (MEDIUM / f).read_bytes(), f
