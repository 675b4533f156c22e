"""evaluate.py's trust: test data must fit the run, eval.json never loses results a new evaluation does not
recompute, and a run's data are found by the path recorded when it was trained; and its speed options: fp32
outputs that do not depend on the batch, bf16 within its rounding, both recorded, the test sets distorted once."""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from iqals_fast import evaluate as evaluate_module
from iqals_fast.cli import main
from iqals_fast.config import CORRUPTION_SETS, TEST_SET_NAMES, TEST_SETS
from iqals_fast.data.sources import synthetic
from iqals_fast.evaluate import EVAL_BATCH, MIN_ROWS, distorted, evaluate, predict_log_probs
from iqals_fast.inference import CHECK_MARGIN, default_eval_precision
from iqals_fast.model import standardize
from iqals_fast.ops.api import distort_and_score
from iqals_fast.runs import EVAL, RunError, load_trained
from iqals_fast.train import TrainConfig, train

DS = synthetic(300, 60)


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run, trained once (1 epoch, 100 images) and evaluated on both suites; each test copies it."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("IQALS_CACHE", str(root / "cache"))
        run = train(TrainConfig(strategy=3, data="synthetic", epochs=1, train_subset=100, batch_size=50, seed=0,
                                out=str(root / "run")), dataset=DS, progress=False)
        evaluate(run, dataset=DS)
    return run


@pytest.fixture
def run(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def test_eval_refuses_test_data_of_other_classes_or_image_size(run):
    before = (run / EVAL).read_bytes()
    other_classes = dataclasses.replace(DS, classes=tuple(f"kind{i}" for i in range(10)), source="other-classes")
    with pytest.raises(RunError, match=r"other-classes: its classes \(kind0, .*\) are not those .* was trained on "
                                       r"\(class0, class1"):
        evaluate(run, dataset=other_classes, suite="table2")
    with pytest.raises(RunError, match=r"its test images are 16 x 16 x 3, but .* was trained on 32 x 32 x 3 images"):
        evaluate(run, dataset=synthetic(60, 20, size=16), suite="table2")
    assert (run / EVAL).read_bytes() == before  # the earlier evaluation is untouched


def test_a_one_suite_eval_keeps_the_other_suites_results_measured_on_the_same_images(run):
    """The same test images under another path (another source string, the same checksum and number) are the
    same test data: a Table 2 evaluation keeps the corruption results and the pooled correlation over both."""
    before = json.loads((run / EVAL).read_text())
    moved = dataclasses.replace(DS, source="/elsewhere/the-same-data")
    after = evaluate(run, dataset=moved, suite="table2")
    assert after["corruptions"] == before["corruptions"] and after["corruptions"]
    assert after["pooled"] == before["pooled"] and "all" in after["pooled"]
    assert after["results"] == before["results"]
    assert json.loads((run / EVAL).read_text())["corruptions"] == before["corruptions"]


@pytest.mark.parametrize("other", ["other test data", "fewer test images"])
def test_a_one_suite_eval_that_would_drop_results_is_refused(run, other):
    before = (run / EVAL).read_bytes()
    kw = {"dataset": synthetic(300, 60, seed=1)} if other == "other test data" else {"dataset": DS, "test_subset": 30}
    with pytest.raises(RunError, match=rf"{EVAL} holds corruptions results measured on other test data .*"
                                       "--suite table2 would replace it without them: pass --suite all"):
        evaluate(run, suite="table2", **kw)
    assert (run / EVAL).read_bytes() == before
    res = evaluate(run, suite="all", **kw)  # asked for explicitly: everything re-evaluated on the new data
    assert res["n_test"] == (60 if other == "other test data" else 30) and res["corruptions"]


def test_a_one_suite_eval_after_more_training_does_not_keep_the_earlier_checkpoints_results(tmp_path):
    c = TrainConfig(strategy=1, data="synthetic", epochs=2, train_subset=100, batch_size=50, seed=0,
                    out=str(tmp_path / "r"))
    run = train(c, dataset=DS, progress=False, stop_after=1)
    evaluate(run, dataset=DS)
    train(c, dataset=DS, progress=False, resume=True)
    with pytest.raises(RunError, match=r"measured on another checkpoint \(epoch 1; now epoch 2\)"):
        evaluate(run, dataset=DS, suite="table2")
    assert evaluate(run, dataset=DS, suite="corruptions")["checkpoint"]["epoch"] == 2  # recomputes both suites


def test_eval_finds_the_runs_data_by_the_path_recorded_at_training_wherever_it_runs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for cls in ("cat", "dog"):
            d = tmp_path / "a" / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run = train(TrainConfig(strategy=1, data="imgs", epochs=1, batch_size=8, out=str(tmp_path / "run")),
                progress=False)
    monkeypatch.chdir(tmp_path / "b")  # where no imgs/ is
    res = evaluate(run, suite="table2")
    cfg = json.loads((run / "config.json").read_text())
    assert res["results"]["pristine"]["n"] == 8 and res["test_checksum"] == cfg["dataset"]["checksum"]
    assert cfg["data"] == "imgs" and cfg["dataset"]["path"] == str(tmp_path / "a" / "imgs")  # as given, and resolved


# -- speed options: batch and precision -------------------------------------------------------------------------


def _images(n: int = 700) -> np.ndarray:
    """n test images (synthetic, with each kind of distortion among them): more than one batch of every size tried."""
    x = synthetic(10, n, seed=3).test_x
    return np.concatenate([x[: n // 2], distorted(x[n // 2:], "blur", 1.0)[0]])


def test_fp32_outputs_do_not_depend_on_the_batch_size(trained):
    """Any batch of at least MIN_ROWS gives the same bits, and so does one plain PyTorch forward of all the images
    at once (what an evaluation with one batch of 1,000 or more did): the last partial batch is padded, so an
    image's outputs do not depend on the batch it falls in. Batches of 700 (one), 333 (last 34, padded), 250
    (the default: 200), 128 (60); and five images alone."""
    model = load_trained(trained)[0].to(memory_format=torch.channels_last)
    x = _images()
    with torch.no_grad():
        ref = torch.log_softmax(model(standardize(torch.from_numpy(x))), 1).double().numpy()
    for b in (1000, 333, EVAL_BATCH, MIN_ROWS):
        assert np.array_equal(predict_log_probs(model, x, "cpu", b), ref), b
    assert np.array_equal(predict_log_probs(model, x[650:655], "cpu"), ref[650:655])


def test_eval_json_records_the_precision_and_batch_and_fp32_results_do_not_depend_on_the_batch(run):
    assert json.loads((run / EVAL).read_text())["precision"] == default_eval_precision("cpu")
    before = evaluate(run, dataset=DS, precision="fp32")
    assert (before["precision"], before["batch"]) == ("fp32", EVAL_BATCH)
    after = evaluate(run, dataset=DS, batch=MIN_ROWS + 1, precision="fp32")
    saved = json.loads((run / EVAL).read_text())
    assert (saved["precision"], saved["batch"]) == ("fp32", MIN_ROWS + 1)
    for part in ("results", "corruptions", "pooled"):
        assert after[part] == before[part] and saved[part] == before[part], part
    assert set(saved["timing"]) == {"distort", "predict", "metrics"}


def test_eval_json_records_which_images_each_table2_set_got_right(run):
    """``correct`` (packed bits) on Table 2's sets, agreeing with the accuracy and with the model's predictions."""
    from iqals_fast.evaluate import test_sets
    from iqals_fast.metrics import unpack_correct

    saved = json.loads((run / EVAL).read_text())
    n = saved["n_test"]
    for name in TEST_SET_NAMES:
        r = saved["results"][name]
        assert unpack_correct(r["correct"], n).mean() == pytest.approx(r["accuracy"], abs=1e-12), name
    assert all("correct" not in r for r in saved["corruptions"].values())  # Table 2's sets only
    model, _, _ = load_trained(run, "cpu")
    x, _ = test_sets(DS)["blur2"]
    pred = predict_log_probs(model, x, "cpu", EVAL_BATCH, saved["precision"]).argmax(1)
    np.testing.assert_array_equal(unpack_correct(saved["results"]["blur2"]["correct"], n), pred == DS.test_y)


def test_bf16_evaluation_agrees_with_fp32_within_bf16_rounding(run):
    """bf16 keeps 8 significant bits (a relative rounding of 2^-9 ~ 0.2%) of each input and weight of the four
    matrix products; on three models (this one, 1 and 35 epochs on CIFAR-10) the logits came out at most 0.9% of
    the largest logit away from fp32's, and a log-probability moves at most twice the largest logit error: 4% of
    the largest logit is about twice the worst seen. eval.json records bf16; a bf16 evaluation of one suite does not
    keep the other's fp32 results."""
    model = load_trained(run)[0].to(memory_format=torch.channels_last)
    x = _images()
    with torch.no_grad():
        scale = model(standardize(torch.from_numpy(x))).abs().max().item()
    fp32, bf16 = predict_log_probs(model, x, "cpu"), predict_log_probs(model, x, "cpu", precision="bf16")
    assert 0 < np.abs(bf16 - fp32).max() <= 0.04 * scale  # it does run in bf16, and close
    default = default_eval_precision("cpu")
    with pytest.raises(RunError, match=rf"holds corruptions results measured in {default} \(now bf16\)"):
        evaluate(run, dataset=DS, suite="table2", precision="bf16")
    res = evaluate(run, dataset=DS, precision="bf16")
    saved = json.loads((run / EVAL).read_text())
    assert saved["precision"] == res["precision"] == "bf16" and saved["corruptions"]
    assert evaluate(run, dataset=DS, suite="corruptions", precision="bf16")["results"] == res["results"]  # kept


def test_checked_evaluation_predicts_what_fp32_does_redoing_exactly_the_close_calls(run):
    """``checked``: the rows whose two largest bf16 logits are closer than CHECK_MARGIN of the largest are
    fp32's bit for bit, the others bf16's; every predicted class is fp32's (here and on all 25 CIFAR-10 sets
    of a trained model: bench/results/eval-*.md)."""
    model = load_trained(run)[0].to(memory_format=torch.channels_last)
    x = _images()
    fp32, bf16 = predict_log_probs(model, x, "cpu"), predict_log_probs(model, x, "cpu", precision="bf16")
    checked = predict_log_probs(model, x, "cpu", precision="checked")
    top2 = np.sort(bf16, 1)[:, -2:]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scale = model(standardize(torch.from_numpy(x))).float().abs().amax(1).numpy()
    close = top2[:, 1] - top2[:, 0] < CHECK_MARGIN * scale
    assert 0 < close.sum() < len(x)  # both kinds of rows are exercised
    assert np.array_equal(checked[close], fp32[close]) and np.array_equal(checked[~close], bf16[~close])
    assert np.array_equal(checked.argmax(1), fp32.argmax(1))
    res = evaluate(run, dataset=DS, precision="checked")
    exact = evaluate(run, dataset=DS, precision="fp32")
    for part in ("results", "corruptions"):
        assert {k: v["accuracy"] for k, v in res[part].items()} == {k: v["accuracy"] for k, v in exact[part].items()}


@pytest.mark.parametrize("bad", ["fp16", "BF16", 32])
def test_a_bad_precision_or_batch_is_refused_naming_it(run, bad, capsys):
    before = (run / EVAL).read_bytes()
    with pytest.raises(ValueError, match=rf"--precision must be one of fp32, bf16, checked, got {re.escape(repr(bad))}"):
        evaluate(run, dataset=DS, precision=bad)
    if isinstance(bad, str):
        with pytest.raises(SystemExit):
            main(["eval", str(run), "--precision", bad])
        err = capsys.readouterr().err  # (Python 3.12 quotes the choices, 3.11 does not)
        choices = r"'?fp32'?, '?bf16'?, '?checked'?"
        assert re.search(rf"argument --precision: invalid choice: '{bad}' \(choose from {choices}\)", err)
    with pytest.raises(ValueError, match=r"--batch must be a positive integer, got 0"):
        evaluate(run, dataset=DS, batch=0)
    assert (run / EVAL).read_bytes() == before


def test_the_test_sets_are_distorted_once_per_test_images(run, tmp_path, monkeypatch):
    """Sets of one (kind, parameter) are the same images (CIFAR-10-C blur 0.7, 1.0, noise 0.01 are Table 2's
    blur1, blur2, noise2), distorted once; with one memo, a second run on the same test images distorts nothing,
    and its results are those of an evaluation without it."""
    calls = []
    real = distort_and_score

    def counted(images, kind, **kw):
        calls.append((kind, kw["param"]))
        return real(images, kind, **kw)

    monkeypatch.setattr(evaluate_module, "distort_and_score", counted)
    before = json.loads((run / EVAL).read_text())
    memo = {}
    first = evaluate(run, dataset=DS, memo=memo)
    assert len(calls) == len(set(calls)) == len(TEST_SETS) - 1 + len(CORRUPTION_SETS) - 3
    other = shutil.copytree(run, tmp_path / "other")
    second = evaluate(other, dataset=dataclasses.replace(DS, source="elsewhere"), memo=memo)
    assert len(calls) == len(TEST_SETS) - 1 + len(CORRUPTION_SETS) - 3
    for part in ("results", "corruptions", "pooled"):
        assert first[part] == second[part] == before[part]
