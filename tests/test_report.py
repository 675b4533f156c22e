"""report/ (tables, figures, the reproduction report's Markdown) and the constants it reads from config:
the committed results regenerate byte for byte from the committed run directories."""

import json
import types
from pathlib import Path

import numpy as np
import pytest

from iqals_fast import config
from iqals_fast.config import KINDS, PRISTINE_STRATEGY, PROTOCOLS, STRATEGIES, STRATEGY_PAIRS, TEST_SET_NAMES
from iqals_fast.report import (
    PAPER_TABLE,
    SET_NAMES,
    calibration_table,
    claim_quantities,
    claims,
    corruption_table,
    curve_figure,
    curve_panels,
    extended_reports,
    figure3,
    load_evals,
    load_paper,
    paper_aggregate,
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
    """`iqals-fast table results/runs/strategy{1..9}-seed{0,1} --out DIR` = the committed results/ files (the paper's
    numbers beside ours, as by default)."""
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
                          iqa=iqa, ssim_runs=ssim_runs if iqa != "ssim" else (), paper=load_paper())
    assert _after_header(report.read_text()) == _after_header((ref / "report.md").read_text())
    names = ["table2.csv", "table2.md", "corruptions.csv", "calibration.csv", "calibration.md"]
    for f in names + (["measures.md", "measures.csv"] if iqa != "ssim" else []):
        assert (tmp_path / f).read_bytes() == (ref / f).read_bytes(), f
    for f in ("figure3.png", "reliability.png", "figure4_ssim.png", "corruptions.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"


def _evaluated(path, strategy=1, seed=0, acc=0.5, accs=None, finetune_from=None):
    """A run directory with an eval.json (accuracy ``acc + 0.01 i`` on the i-th set, or ``accs``: set -> percent) and,
    with ``finetune_from``, a config.json that says it was fine-tuned."""
    import json

    path.mkdir(parents=True)
    accs = accs or {n: 100 * (acc + 0.01 * i) for i, n in enumerate(SET_NAMES)}
    (path / "eval.json").write_text(json.dumps({"strategy": strategy, "seed": seed, "iqa": "ssim", "results": {
        n: {"accuracy": accs[n] / 100, "n": 10_000} for n in SET_NAMES}}))
    if finetune_from:
        (path / "config.json").write_text(json.dumps({
            "strategy": strategy, "data": "synthetic", "epochs": 3, "seed": seed, "strategy_name": "x",
            "dataset": {"checksum": "c", "classes": []}, "finetune_from": finetune_from}))
    return path


def test_trained_on_counts_each_runs_processor(tmp_path):
    import json

    from iqals_fast.report.markdown import trained_on

    runs = []
    for i, cpu in enumerate(["Xeon", "EPYC", "Xeon", None]):
        r = _evaluated(tmp_path / f"r{i}", finetune_from="x")
        cfg = json.loads((r / "config.json").read_text())
        (r / "config.json").write_text(json.dumps({**cfg, "versions": {"processor": cpu}}))
        runs.append(r)
    assert trained_on(runs[:3], runs[3:]) == "Xeon (2 runs), EPYC (1 run), an unrecorded processor (1 run)"


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


SHARED_PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "table2.csv"


def test_the_papers_table_2_ships_with_the_package():
    """All nine strategies on the ten sets, read through importlib.resources; the same as the project's copy of
    the paper's figures where that is here; spot values as printed in the paper."""
    import importlib.resources

    import iqals_fast.report

    paper = load_paper()
    assert set(paper) == {(s, n) for s in STRATEGIES for n in SET_NAMES}
    assert paper[(1, "pristine")] == 79.4 and paper[(9, "jpeg3")] == 58.5 and paper[(5, "pristine")] == 80.7
    assert (importlib.resources.files(iqals_fast.report) / PAPER_TABLE).is_file()
    if SHARED_PAPER.is_file():
        assert load_paper(SHARED_PAPER) == paper


def test_table_shows_the_paper_beside_ours_by_default(tmp_path):
    r = _evaluated(tmp_path / "a", strategy=3, acc=0.5)
    md = table([r], out_dir=tmp_path / "t")
    assert "| 3 | MIX_blur + IQA-LS | 50.00 (79.80, -29.80) | 51.00 (78.20, -27.20) |" in md
    assert "its Table 2, shipped with iqals_fast" in md
    assert "3,MIX_blur + IQA-LS,pristine,50.0,0.0,1,79.8,-29.8,0" in (tmp_path / "t" / "table2.csv").read_text()
    bare = table([r], show_paper=False)
    assert "| 3 | MIX_blur + IQA-LS | 50.00 | 51.00 |" in bare and "paper" not in bare
    other = tmp_path / "other.csv"
    other.write_text("strategy,test_set,accuracy\n3,pristine,40\n")
    assert "50.00 (40.00, +10.00) | 51.00 |" in table([r], paper_csv=other) and "from other.csv" in table([r], other)


def test_cli_table_paper_options(tmp_path, capsys):
    from iqals_fast.cli import main

    r = _evaluated(tmp_path / "a", strategy=1)
    assert main(["table", str(r)]) == 0 and "50.00 (79.40, -29.40)" in capsys.readouterr().out
    assert main(["table", str(r), "--no-paper"]) == 0 and "79.40" not in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("strategy,test_set,accuracy\n1,pristine,101\n")
    assert main(["table", str(r), "--paper", str(bad)]) == 2
    assert f"{bad}:2: accuracy 101 is not a percentage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["table", str(r), "--paper", str(bad), "--no-paper"])


def test_finetuned_runs_are_rows_of_their_own(tmp_path):
    scratch = _evaluated(tmp_path / "s3", strategy=3, acc=0.5)
    tuned = _evaluated(tmp_path / "s3ft", strategy=3, acc=0.6, finetune_from=str(tmp_path / "s2"))
    md = table([scratch, tuned], show_paper=False)
    assert "| 3 | MIX_blur + IQA-LS | 50.00 | 51.00 |" in md  # not averaged with the fine-tuned run
    assert "| 3 ft | MIX_blur + IQA-LS, fine-tuned from 2 | 60.00 | 61.00 |" in md and "Rows `N ft`" in md


def test_training_curves_one_panel_per_strategy_a_colour_per_seed_and_variant(tmp_path):
    def run(name, strategy, acc, curve=True):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"strategy": strategy, "data": "synthetic", "epochs": 2, "seed": 0,
                                                   "strategy_name": "x", "dataset": {"checksum": "c", "classes": []}}))
        rows = [{"epoch": e, "train_acc": acc, **({"test_acc": acc, "train_conf_true": acc} if curve else {})}
                for e in (1, 2)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d

    runs = [run("strategy9-seed1-finetune", 9, 0.3), run("strategy9-seed0", 9, 0.2), run("strategy1-seed0", 1, 0.1),
            run("strategy8-seed0", 8, 0.4, curve=False)]
    panels = curve_panels(runs)
    assert list(panels) == [1, 9]  # strategy 8 logged no curve
    assert [v for v, _ in panels[9]] == ["seed0", "seed1-finetune"] and panels[9][1][1][0]["test_acc"] == 0.3
    assert curve_figure(runs, tmp_path).read_bytes()[:4] == b"\x89PNG"
    assert curve_figure(runs[3:], tmp_path / "none") is None


def test_claims_on_the_papers_numbers_and_ours():
    """The paper's column is computed from its Table 2 (hand-checked values); a run set equal to the paper's numbers
    agrees with it in every row; fine-tuned rows replace the from-scratch IQA-LS runs."""
    paper = load_paper()
    q = {(k, c, n): v for k, c, n, v in claim_quantities(paper_aggregate(paper))}
    assert q[("blur", "IQA-LS beats 0-1 labels", "MIX_blur + IQA-LS − MIX_blur, pristine")] == pytest.approx(1.7)
    assert q[("all3", "mixing costs on pristine", "MIX_all3 − Pristine, pristine")] == pytest.approx(76.7 - 79.4)
    assert q[("jpeg", "mixing helps on them", "MIX_JPEG − Pristine, mean of the jpeg sets")] == pytest.approx(
        (71.0 + 68.7 + 60.7 - 60.0 - 52.9 - 39.1) / 3)
    evals = [{"strategy": s, "seed": 0, "results": {n: {"accuracy": paper[(s, n)] / 100} for n in SET_NAMES}}
             for s in STRATEGIES]
    rows = claims(evals, paper)
    assert len(rows) == 2 + len(q) and all(r.count("|") == 7 for r in rows)
    for r in rows[2:]:
        _, claim, quantity, theirs, ours, per_seed, same, _ = r.split("|")
        assert theirs == ours == per_seed and same.strip() in ("yes", "(paper 0)"), r
    assert claims(evals[:1], paper) == []  # strategy 1 alone: no claim to check
    ft = [{**evals[2], "results": {n: {"accuracy": paper[(2, n)] / 100 - 0.01} for n in SET_NAMES}, "finetuned": True}]
    extra = [r for r in claims(evals, paper, ft) if "fine-tuned" in r]
    assert len(extra) == 4 and all("| -1.00 | -1.00 |" in r for r in extra)  # strategy 3 fine-tuned = 2 minus a point
    # a second seed without its fine-tuned run: no evidence on fine-tuning (—), and the mean stays seed 0's, not a
    # mix of seed 1's from-scratch IQA-LS run and the other seeds' 0-1 label runs
    seed1 = [{**e, "seed": 1, "results": {n: {"accuracy": paper[(e["strategy"], n)] / 100 + 0.05} for n in SET_NAMES}}
             for e in evals if e["strategy"] in (1, 2)] + [
        {**e, "seed": 1, "results": {n: {"accuracy": paper[(e["strategy"], n)] / 100 - 0.03} for n in SET_NAMES}}
        for e in evals if e["strategy"] not in (1, 2)]
    extra = [r for r in claims(evals + seed1, paper, ft) if "fine-tuned" in r]
    assert len(extra) == 4 and all("| -1.00 | -1.00, — |" in r for r in extra), extra


def test_claims_pair_seeds_where_strategies_have_different_seeds():
    """Strategy 1 on seeds 0 and 1, the blur pair on seed 0 alone: each claim is seed 0's difference (not seed 0's
    blur runs against strategy 1's mean over both seeds); with no seed in common, the unpaired difference, marked."""
    from iqals_fast.report import paired_claim_quantities

    evals = [_eval(1, 0, 0.70), _eval(1, 1, 0.60), _eval(2, 0, 0.75), _eval(3, 0, 0.77)]
    row = next(r for r in claims(evals) if "mixing costs on pristine" in r)
    assert "| +5.00 | +5.00, — |" in row  # 75 - 70 on seed 0; the unpaired mean would say 75 - 65 = +10
    assert paired_claim_quantities(evals)[("blur", "mixing costs on pristine", "MIX_blur − Pristine, pristine")] == \
        pytest.approx(5.0)
    apart = [_eval(1, 1, 0.60), _eval(2, 0, 0.75), _eval(3, 0, 0.77)]
    row = next(r for r in claims(apart) if "mixing costs on pristine" in r)
    assert "| +15.00 (unpaired) | —, — |" in row


def _eval(strategy, seed, accs, n=10_000):
    """An eval dict with accuracy ``accs[set]`` (fraction; one number: every set) on ``n`` images."""
    accs = accs if isinstance(accs, dict) else {s: accs for s in SET_NAMES}
    return {"strategy": strategy, "seed": seed, "results": {s: {"accuracy": accs[s], "n": n} for s in SET_NAMES}}


def test_label_effects_difference_spread_binomial_error_and_verdict():
    """IQA-LS minus 0-1 labels per mixture and group: the per-seed differences, their spread (ddof 1), the binomial
    error of a difference on n images (hand-computed), the combined error and the verdict at VERDICT_Z errors."""
    from iqals_fast.report import VERDICT_Z, label_effects

    evals = [_eval(8, 0, 0.70), _eval(9, 0, 0.74), _eval(8, 1, 0.70), _eval(9, 1, 0.72),  # +4, +2: IQA-LS ahead
             _eval(2, 0, 0.70), _eval(3, 0, 0.705)]  # +0.5 on one seed: within error
    rows = {(r["kind"], r["group"]): r for r in label_effects(evals)}
    assert set(rows) == {(k, g) for k in ("all3", "blur") for g in ("pristine", "levels 1-2", "level 3")}
    r = rows[("all3", "pristine")]
    assert r["seeds"] == [0, 1] and r["per_seed"] == pytest.approx([4.0, 2.0]) and r["mean"] == pytest.approx(3.0)
    assert r["spread"] == pytest.approx(np.sqrt(2.0))  # std of (4, 2), ddof 1
    b = 100 * np.mean([np.sqrt((0.7 * 0.3 + a * (1 - a)) / 10_000) for a in (0.74, 0.72)])
    assert r["binomial"] == pytest.approx(b)
    assert r["error"] == pytest.approx(np.sqrt(b ** 2 + 2.0 / 2)) and r["verdict"] == "IQA-LS"
    assert 3.0 > VERDICT_Z * r["error"]
    blur = rows[("blur", "levels 1-2")]
    assert blur["spread"] is None and blur["error"] == pytest.approx(blur["binomial"]) and blur["verdict"] == "within error"
    worse = label_effects([_eval(4, 0, 0.70), _eval(5, 0, 0.60)])
    assert {r["verdict"] for r in worse} == {"0-1"} and all(r["mean"] == pytest.approx(-10.0) for r in worse)
    # the groups: a single kind's levels, or every kind's for all3
    accs = {s: 0.5 for s in SET_NAMES} | {"blur3": 0.8}
    g = {r["group"]: r["mean"] for r in label_effects([_eval(2, 0, 0.5), _eval(3, 0, accs)])}
    assert g == pytest.approx({"pristine": 0.0, "levels 1-2": 0.0, "level 3": 30.0})
    g = {r["group"]: r["mean"] for r in label_effects([_eval(8, 0, 0.5), _eval(9, 0, accs)])}
    assert g == pytest.approx({"pristine": 0.0, "levels 1-2": 0.0, "level 3": 10.0})
    assert label_effects([_eval(8, 0, 0.5), _eval(9, 1, 0.5)]) == []  # no seed in common
    no_n = {**_eval(8, 0, 0.5), "results": {s: {"accuracy": 0.5} for s in SET_NAMES}}
    r = label_effects([no_n, _eval(9, 0, 0.9)])[0]  # no n in eval.json: no binomial error, so no verdict
    assert r["binomial"] is None and r["error"] is None and r["verdict"] == "within error"


def test_verdict_section_states_the_direction_the_numbers_show():
    from iqals_fast.report import verdict_section

    better = verdict_section([_eval(8, 0, 0.70), _eval(9, 0, 0.75)])
    assert "IQA-LS is better in every comparison (2 of 2 comparisons favour IQA-LS" in better and "One seed only" in better
    assert "| from scratch | all3 | pristine | 0 | **+5.00** | +5.00 | — |" in better
    worse = verdict_section([_eval(8, s, 0.75) for s in (0, 1)] + [_eval(9, s, 0.70) for s in (0, 1)])
    assert "0-1 labels are better in every comparison" in worse and "all 4 per-seed differences are negative" in worse
    assert "One seed only" not in worse and "0-1 better" in worse
    tie = verdict_section([_eval(8, 0, 0.70), _eval(9, 0, 0.701)])
    assert "no difference is resolved" in tie and "within error" in tie
    accs = {n: 0.70 for n in SET_NAMES} | {"blur3": 0.90, "noise3": 0.90, "jpeg3": 0.90}
    mixed = verdict_section([_eval(8, 0, 0.70), _eval(9, 0, accs)])
    assert "no difference is resolved (0 of 2" in mixed
    assert "level 3: IQA-LS is better in every comparison (1 of 1 comparison favours" in mixed
    accs = {n: 0.70 for n in SET_NAMES} | {"pristine": 0.75}
    split = verdict_section([_eval(8, 0, 0.70), _eval(9, 0, accs)])
    assert "IQA-LS better on all3 pristine; within error on all3 levels 1-2 (1 of 2" in split
    ft = verdict_section([_eval(8, 0, 0.70), _eval(9, 0, 0.70)], [{**_eval(9, 0, 0.76), "finetuned": True}])
    assert "**Verdict, IQA-LS from scratch**: on pristine" in ft and "**Verdict, IQA-LS fine-tuned from 0-1 labels**" in ft
    assert "| fine-tuned from 0-1 labels | all3 | pristine | 0 | **+6.00** |" in ft
    assert verdict_section([_eval(1, 0, 0.7), _eval(9, 0, 0.7)]) == ""  # no mixture with both strategies


def test_comparison_section_confirms_or_overturns_the_other_protocols_claims():
    from iqals_fast.report import comparison_section

    small = [_eval(1, 0, 0.55), _eval(8, 0, 0.56), _eval(9, 0, 0.55)]  # IQA-LS 1 point behind
    medium = [_eval(1, 0, 0.78), _eval(8, 0, 0.76), _eval(9, 0, 0.78)]  # 2 points ahead
    md = comparison_section(medium, small, "small", "medium", load_paper())
    assert "| 1 | Pristine | 55.00 | 78.00 | 55.00 | 78.00 |" in md and "(`small` 5,000, `medium` all 10,000)" in md
    assert "| **all3**: IQA-LS beats 0-1 labels | MIX_all3 + IQA-LS − MIX_all3, pristine | +2.30 | -1.00 | +2.00 | " \
           "overturns |" in md
    assert "| **all3**: mixing costs on pristine | MIX_all3 − Pristine, pristine | -2.70 | +1.00 | -2.00 | overturns |" in md
    assert "confirms the sign of 0 and overturns 5 of the 5 claim quantities" in md
    partial = comparison_section(medium[:1], small, "small", "medium")
    assert "| 1 | Pristine |" in partial and "does not have them yet" in partial
    assert comparison_section([_eval(2, 0, 0.5)], small, "small", "medium") == ""


def test_label_effects_paired_error_from_the_images_each_run_got_right():
    """With ``correct`` in every eval.json: the paired standard error of the mean difference (each image's
    difference averaged over the group's sets and the seeds, std / sqrt(n), computed here directly), well under
    the unpaired bound when the runs err on mostly the same images; without it (or on other test images) the
    unpaired bound."""
    from iqals_fast.metrics import pack_correct
    from iqals_fast.report import label_effects

    rng = np.random.default_rng(0)
    n = 4000
    hard = rng.random(n)  # an image's difficulty, shared by both runs: their mistakes correlate

    def ev(strategy, seed, skill):
        right = {s: hard < skill - 0.05 * i + 0.03 * rng.standard_normal(n) for i, s in enumerate(SET_NAMES)}
        return {"strategy": strategy, "seed": seed, "test_checksum": "t", "results": {
            s: {"accuracy": float(c.mean()), "n": n, "correct": pack_correct(c)} for s, c in right.items()}}

    evals = [ev(8, 0, 0.70), ev(9, 0, 0.72), ev(8, 1, 0.70), ev(9, 1, 0.71)]
    rows = {r["group"]: r for r in label_effects(evals)}
    lv = rows["levels 1-2"]
    names = [f"{k}{v}" for k in KINDS for v in (1, 2)]
    from iqals_fast.metrics import unpack_correct

    def c(e, s):
        return unpack_correct(e["results"][s]["correct"], n).astype(float)

    d = np.mean([[c(ls, s) - c(zo, s) for s in names] for zo, ls in ((evals[0], evals[1]), (evals[2], evals[3]))],
                axis=(0, 1))
    assert lv["paired"] and lv["binomial"] == pytest.approx(100 * d.std(ddof=1) / np.sqrt(n))
    assert lv["mean"] == pytest.approx(100 * d.mean())
    unpaired = [{**e, "results": {s: {k: v for k, v in r.items() if k != "correct"} for s, r in e["results"].items()}}
                for e in evals]
    bound = {r["group"]: r for r in label_effects(unpaired)}["levels 1-2"]
    assert not bound["paired"] and bound["mean"] == pytest.approx(lv["mean"]) and lv["binomial"] < 0.5 * bound["binomial"]
    other_images = [{**evals[0], "test_checksum": "u"}, *evals[1:]]
    assert not {r["group"]: r for r in label_effects(other_images)}["levels 1-2"]["paired"]
    from iqals_fast.report import verdict_section

    assert "the unpaired bound" in verdict_section(unpaired) and "the unpaired bound" not in verdict_section(evals)
