"""evaluate.py's trust: test data must fit the run, eval.json never loses results a new evaluation does not
recompute, and a run's data are found by the path recorded when it was trained."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from iqals_fast.data.sources import synthetic
from iqals_fast.evaluate import evaluate
from iqals_fast.runs import EVAL, RunError
from iqals_fast.train import TrainConfig, train

DS = synthetic(300, 60)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


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
