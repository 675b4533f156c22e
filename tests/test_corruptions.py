"""The CIFAR-10-C severity suite, eval.json's layout and merging, mCE, and the reports built on them."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import gaussian

from iqals_fast.cli import main
from iqals_fast.config import CORRUPTION_SETS, CORRUPTIONS, TEST_NOISE_SEED
from iqals_fast.data.sources import synthetic
from iqals_fast.evaluate import corruption_sets, evaluate, needs_eval
from iqals_fast.ops.noise import normals
from iqals_fast.report import calibration_table, corruption_errors, corruption_table, extended_reports, load_evals
from iqals_fast.runs import EVAL
from iqals_fast.train import TrainConfig, train

DS = synthetic(200, 40)


def test_parameters_are_cifar10c():
    # Hendrycks and Dietterich, make_cifar_c.py: gaussian_noise c = [0.04, 0.06, .08, .09, .10] (std on [0, 1]),
    # gaussian_blur c = [.4, .6, 0.7, .8, 1], jpeg_compression c = [80, 65, 58, 50, 40]
    assert CORRUPTIONS["gaussian_noise"] == ("noise", (0.0016, 0.0036, 0.0064, 0.0081, 0.01))
    assert CORRUPTIONS["gaussian_blur"] == ("blur", (0.4, 0.6, 0.7, 0.8, 1.0))
    assert CORRUPTIONS["jpeg_compression"] == ("jpeg", (80, 65, 58, 50, 40))
    assert len(CORRUPTION_SETS) == 15


def test_corruption_sets_are_what_cifar10c_computes(gen):
    x = gen(6, 32, 32, seed=4)
    ds = synthetic(20, 6)
    ds.test_x[:] = x
    sets = corruption_sets(ds)
    assert set(sets) == set(CORRUPTION_SETS)
    for sev, sigma in enumerate((0.4, 0.6, 0.7, 0.8, 1.0), 1):  # skimage.filters.gaussian, as make_cifar_c.py
        ref = np.round([gaussian(im / 255.0, sigma=sigma, channel_axis=-1, mode="nearest", truncate=4.0) * 255 for im in x])
        assert np.abs(sets[f"gaussian_blur-{sev}"][0].astype(int) - ref).max() <= 1
    for sev, q in enumerate((80, 65, 58, 50, 40), 1):  # PIL JPEG at CIFAR-10-C's quality
        for i in range(len(x)):
            buf = io.BytesIO()
            Image.fromarray(x[i]).save(buf, format="JPEG", quality=q)
            np.testing.assert_array_equal(sets[f"jpeg_compression-{sev}"][0][i], np.asarray(Image.open(buf)))
    # noise: clip(x + sigma z, 0, 1) with the fixed test noise z, the same z at every severity
    z = normals(TEST_NOISE_SEED, torch.arange(len(x)), x.shape[1], x.shape[2]).numpy().astype(np.float64)
    for sev, sigma in enumerate((0.04, 0.06, 0.08, 0.09, 0.10), 1):
        ref = np.round(np.clip(x / 255.0 + sigma * z, 0, 1) * 255)
        assert np.abs(sets[f"gaussian_noise-{sev}"][0].astype(int) - ref).max() <= 1
    for c in CORRUPTIONS:  # quality falls with severity
        ssim = [sets[f"{c}-{s}"][1].mean() for s in range(1, 6)]
        assert all(a > b for a, b in zip(ssim, ssim[1:])), (c, ssim)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    for s in (1, 9):
        cfg = TrainConfig(strategy=s, data="synthetic", epochs=1, train_subset=200, seed=0, batch_size=50,
                          out=str(root / f"strategy{s}-seed0"))
        out.append(train(cfg, dataset=DS, progress=False))
    return out


def test_suites_merge_and_old_layouts_are_detected(runs):
    r = runs[0]
    assert needs_eval(r)
    e = evaluate(r, dataset=DS, suite="table2")
    assert not e["corruptions"] and needs_eval(r) and not needs_eval(r, "table2")
    e = evaluate(r, dataset=DS, suite="corruptions")
    assert set(e["corruptions"]) == set(CORRUPTION_SETS) and len(e["results"]) == 10  # Table 2's kept
    assert set(e["pooled"]) == {"table2", "corruptions"} and not needs_eval(r)
    full = evaluate(r, dataset=DS)
    assert full["results"] == e["results"] and full["corruptions"] == e["corruptions"]
    assert full["pooled"]["all"]["n"] == 25 * len(DS.test_y)
    assert full["results"]["pristine"]["spearman_true_conf_ssim"] is None
    # CIFAR-10-C blur 0.7 / 1.0 and noise 0.01 are Table 2's blur1 / blur2 / noise2: the same images and numbers
    for c, t in (("gaussian_blur-3", "blur1"), ("gaussian_blur-5", "blur2"), ("gaussian_noise-5", "noise2")):
        same = {k: v for k, v in full["results"][t].items() if k != "correct"}  # (recorded on Table 2's sets only)
        assert full["corruptions"][c] == same
    assert full["versions"]["torch"] and full["eval_version"] == 2
    # --suite corruptions on a run without Table 2's results evaluates those too (mCE needs the clean accuracy)
    e2 = evaluate(runs[1], dataset=DS, suite="corruptions")
    assert len(e2["results"]) == 10 and len(e2["corruptions"]) == 15 and not needs_eval(runs[1])
    # an eval.json of the first layout (Table 2 accuracies only) is re-evaluated
    old = {k: v for k, v in full.items() if k not in ("eval_version", "corruptions", "pooled")}
    (r / EVAL).write_text(json.dumps(old))
    assert needs_eval(r, "table2")


def test_eval_progress_bar_counts_every_set(runs, capsys):
    """``iqals-fast eval`` shows a bar over the sets it distorts (24) and tests (25), naming each; the
    library call and ``--no-progress`` stay silent on stderr."""
    from iqals_fast.cli import main

    evaluate(runs[1], dataset=DS)
    assert capsys.readouterr().err == ""
    evaluate(runs[1], dataset=DS, progress=True)
    err = capsys.readouterr().err
    assert "49/49" in err and "test jpeg_compression-5" in err  # the last refresh: all counted
    evaluate(runs[1], dataset=DS, suite="table2", progress=True)  # 9 distorted sets, 10 tested
    assert "19/19" in capsys.readouterr().err
    # the run's own data spec ("synthetic": other images than DS): a one-suite eval would drop the corruption
    # results measured on DS, so it is refused with a message; --suite all re-evaluates everything, silently
    assert main(["eval", str(runs[1]), "--suite", "table2", "--no-progress"]) == 2
    assert "--suite all" in capsys.readouterr().err
    assert main(["eval", str(runs[1]), "--suite", "all", "--no-progress", "--test-subset", "40"]) == 0
    assert capsys.readouterr().err == ""


def test_corruption_errors_by_hand():
    def ev(clean_acc, accs):
        return {"results": {"pristine": {"accuracy": clean_acc}},
                "corruptions": {f"{c}-{s}": {"accuracy": accs[i]} for i, c in enumerate(CORRUPTIONS) for s in range(1, 6)}}

    base = ev(0.6, [0.5, 0.4, 0.3])  # errors 0.5, 0.6, 0.7 at every severity
    run = ev(0.55, [0.55, 0.4, 0.44])  # errors 0.45, 0.6, 0.56
    ce = corruption_errors(run, base)
    assert ce["CE gaussian_noise"] == pytest.approx(90.0)
    assert ce["CE gaussian_blur"] == pytest.approx(100.0)
    assert ce["CE jpeg_compression"] == pytest.approx(80.0)
    assert ce["mCE"] == pytest.approx(90.0)
    # relative: (E - E_clean) / (E_base - E_base_clean): (0.45 - 0.45) / 0.1 = 0, (0.6 - 0.45) / 0.2, (0.56 - 0.45) / 0.3
    assert ce["relative mCE"] == pytest.approx(100 * (0 + 0.75 + 0.11 / 0.3) / 3)
    assert corruption_errors(base, base)["mCE"] == pytest.approx(100.0)


def test_reports_and_cli(runs, tmp_path, capsys):
    assert main(["eval", *map(str, runs), "--data", "synthetic", "--test-subset", "40"]) == 0
    evals = load_evals(runs)
    md = corruption_table(evals, tmp_path)
    assert "| 1 | Pristine |" in md and "| 9 | MIX_all3 + IQA-LS |" in md and "mCE" in md
    assert md.splitlines()[2].split(" | ")[-2] == "100.0"  # strategy 1's mCE against itself
    cal = calibration_table(evals, tmp_path)
    assert "ECE (%) clean" in cal and "ρ pooled" in cal
    text = (tmp_path / "calibration.md").read_text()
    assert "## ECE (%)" in text and "gaussian_blur-5" in text
    paths = extended_reports(runs, tmp_path)
    for name in ("reliability.png", "figure4_ssim.png", "corruptions.png", "corruptions.csv", "calibration.csv"):
        assert (tmp_path / name).stat().st_size > 100
    assert len(paths) == 5
    capsys.readouterr()
    assert main(["table", *map(str, runs)]) == 0
    assert "relative mCE" in capsys.readouterr().out
    assert main(["figures", *map(str, runs), "--out", str(tmp_path / "figs"), "--data", "synthetic"]) == 0
    assert (tmp_path / "figs" / "reliability.png").is_file()


def test_suite_option():
    with pytest.raises(ValueError, match="--suite must be one of"):
        evaluate("nowhere", suite="cifar10c")
