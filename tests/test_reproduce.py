"""``iqals-fast reproduce`` end to end on a tiny protocol: resumable, reproducible, a complete report."""

import json

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
