"""report/ (tables, figures, the reproduction report's Markdown) and the constants it reads from config:
the committed results regenerate byte for byte from the committed run directories."""

import types
from pathlib import Path

import pytest

from iqals_fast import config
from iqals_fast.config import KINDS, PRISTINE_STRATEGY, PROTOCOLS, STRATEGIES, STRATEGY_PAIRS, TEST_SET_NAMES
from iqals_fast.report import (
    SET_NAMES,
    calibration_table,
    corruption_table,
    extended_reports,
    figure3,
    load_evals,
    table,
    write_report,
)
from iqals_fast.reproduce import run_name

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUNS = [RESULTS / "runs" / f"strategy{s}-seed{sd}" for sd in (0, 1) for s in STRATEGIES]
committed = pytest.mark.skipif(not all((r / "eval.json").is_file() for r in RUNS),
                               reason="the committed run directories (results/runs) are absent")


def test_strategy_pairs_are_derived_from_the_strategies():
    assert STRATEGY_PAIRS == {"blur": (2, 3), "noise": (4, 5), "jpeg": (6, 7), "all3": (8, 9)}
    for zo, ls in STRATEGY_PAIRS.values():
        assert STRATEGIES[zo].kinds == STRATEGIES[ls].kinds and not STRATEGIES[zo].iqa_ls and STRATEGIES[ls].iqa_ls
    assert [STRATEGY_PAIRS[k][0] for k in KINDS] == [2, 4, 6] and STRATEGIES[STRATEGY_PAIRS["all3"][0]].kinds == KINDS
    assert PRISTINE_STRATEGY == 1 and not STRATEGIES[PRISTINE_STRATEGY].mixed
    assert SET_NAMES == TEST_SET_NAMES == ("pristine", "blur1", "blur2", "blur3", "noise1", "noise2", "noise3",
                                           "jpeg1", "jpeg2", "jpeg3")
    assert len(config.CORRUPTION_SETS) == 15 and config.DEFAULT_SUITE in config.SUITES


@committed
def test_committed_tables_regenerate_byte_identical(tmp_path):
    """`iqals-fast table results/runs/strategy{1..9}-seed{0,1} --out DIR` = the committed results/ files."""
    table(RUNS, out_dir=tmp_path)
    evals = load_evals(RUNS)
    corruption_table(evals, tmp_path)
    calibration_table(evals, tmp_path)
    for f in ("table2.csv", "table2.md", "corruptions.csv", "corruptions.md", "calibration.csv", "calibration.md"):
        assert (tmp_path / f).read_bytes() == (RESULTS / f).read_bytes(), f


def _after_header(text: str) -> str:
    """report.md from its Table 2 on (the header names the machine, versions and times of the run)."""
    return text[text.index("## Table 2"):]


@committed
@pytest.mark.parametrize("iqa", ["ssim", "gmsd", "ms-ssim-small"])
def test_committed_reports_regenerate(iqa, tmp_path):
    """The reproduction report and its files (``reproduce``'s report step, without training, Figure 4 or
    the dataset) from the committed runs: identical to the committed ones from Table 2 on; --iqa M's
    report with its measures.md / .csv too."""
    runs = [RESULTS / "runs" / run_name(s, sd, iqa) for sd in (0, 1) for s in STRATEGIES]
    if not all((r / "eval.json").is_file() for r in runs):
        pytest.skip(f"the committed {iqa} runs are absent")
    ssim_runs = [RESULTS / "runs" / run_name(s, sd) for sd in (0, 1) for s in STRATEGIES if STRATEGIES[s].iqa_ls]
    ref = RESULTS if iqa == "ssim" else RESULTS / f"iqa-{iqa}"
    ds = types.SimpleNamespace(source="data", checksum="sha")
    table(runs, out_dir=tmp_path)
    figure3(runs, tmp_path)
    assert len(extended_reports(runs, tmp_path)) == 5
    report = write_report(tmp_path, PROTOCOLS["small"], runs, ds, (0, 1), wall=60.0, command="iqals-fast reproduce",
                          iqa=iqa, ssim_runs=ssim_runs if iqa != "ssim" else ())
    assert _after_header(report.read_text()) == _after_header((ref / "report.md").read_text())
    names = ["table2.csv", "corruptions.csv", "calibration.csv", "calibration.md"]
    for f in names + (["measures.md", "measures.csv"] if iqa != "ssim" else []):
        assert (tmp_path / f).read_bytes() == (ref / f).read_bytes(), f
    for f in ("figure3.png", "reliability.png", "figure4_ssim.png", "corruptions.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"


def _evaluated(path, strategy=1, seed=0, acc=0.5):
    import json

    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps({"strategy": strategy, "seed": seed, "iqa": "ssim", "results": {
        n: {"accuracy": acc + 0.01 * i} for i, n in enumerate(SET_NAMES)}}))
    return path


def test_table_counts_a_run_given_twice_once(tmp_path, capsys):
    r = _evaluated(tmp_path / "runs" / "a")
    once = table([r], out_dir=tmp_path / "once")
    twice = table([r, tmp_path / "runs" / ".." / "runs" / "a"], out_dir=tmp_path / "twice")
    assert twice == once and "±" not in twice
    assert (tmp_path / "twice" / "table2.csv").read_text() == (tmp_path / "once" / "table2.csv").read_text()
    assert "given again; counted once" in capsys.readouterr().err
    two_seeds = table([r, _evaluated(tmp_path / "runs" / "b", seed=1, acc=0.6)])
    assert "55.00 ± 5.00" in two_seeds  # two runs are two seeds


@pytest.mark.parametrize("value", ["250", "-1", "100.5", "nan"])
def test_paper_accuracies_outside_0_100_are_refused_naming_the_file_and_line(tmp_path, value):
    from iqals_fast.report import load_paper

    paper = tmp_path / "paper.csv"
    paper.write_text(f"strategy,test_set,accuracy\n1,pristine,80.0\n1,blur1,{value}\n")
    with pytest.raises(ValueError, match=rf"{paper}:3: accuracy {value} is not a percentage in \[0, 100\]"):
        load_paper(paper)
    paper.write_text("strategy,test_set,accuracy\n1,pristine,0\n1,blur1,100\n")
    assert load_paper(paper) == {(1, "pristine"): 0.0, (1, "blur1"): 100.0}
