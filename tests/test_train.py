"""Training, resume, evaluation, reports and the command line, end to end on small data."""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import iqals_fast.train as training
from iqals_fast import runs
from iqals_fast.cli import main
from iqals_fast.data.sources import synthetic
from iqals_fast.evaluate import evaluate
from iqals_fast.model import PaperCNN
from iqals_fast.report import figure3, figure4, table
from iqals_fast.runs import RunError
from iqals_fast.train import TrainConfig, train

DS = synthetic(300, 60)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


def cfg(tmp_path, name, **kw):
    base = dict(strategy=9, data="synthetic", epochs=3, train_subset=200, seed=1, batch_size=50, out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


def test_resume_reaches_the_same_weights(tmp_path):
    full = train(cfg(tmp_path, "full"), dataset=DS, progress=False)
    part = train(cfg(tmp_path, "part"), dataset=DS, progress=False, stop_after=1)
    assert torch.load(part / "checkpoint.pt", weights_only=True)["epoch"] == 1
    train(cfg(tmp_path, "part"), dataset=DS, progress=False, resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert set(json.loads(lines[0])["mean_ssim"]) == {f"{k}{lv}" for k in ("blur", "noise", "jpeg") for lv in (1, 2, 3)}


def test_run_protection_and_resume_checks(tmp_path):
    c = cfg(tmp_path, "r", epochs=1, strategy=1)
    train(c, dataset=DS, progress=False)
    with pytest.raises(RunError, match="already holds a run: pass --resume"):
        train(c, dataset=DS, progress=False)
    with pytest.raises(RunError, match="seed was 1, now 2"):
        train(cfg(tmp_path, "r", epochs=1, strategy=1, seed=2), dataset=DS, progress=False, resume=True)
    with pytest.raises(RunError, match="no checkpoint"):
        train(cfg(tmp_path, "nothing"), dataset=DS, progress=False, resume=True)


def test_training_learns(tmp_path):
    r = train(cfg(tmp_path, "learn", strategy=1, epochs=3, train_subset=300, batch_size=10), dataset=DS, progress=False)
    hist = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]
    acc = evaluate(r, dataset=DS)["results"]["pristine"]["accuracy"]
    assert acc > 0.3  # chance is 0.1


def test_reports(tmp_path):
    runs = []
    for s in (1, 2, 3):
        r = train(cfg(tmp_path, f"s{s}", strategy=s, epochs=1), dataset=DS, progress=False)
        runs.append(r)
        res = evaluate(r, dataset=DS)
        assert set(res["results"]) == {"pristine"} | {f"{k}{lv}" for k in ("blur", "noise", "jpeg") for lv in (1, 2, 3)}
    md = table(runs, out_dir=tmp_path / "rep")
    assert "| 1 | Pristine |" in md and "| 3 | MIX_blur + IQA-LS |" in md
    assert (tmp_path / "rep" / "table2.csv").read_text().count("\n") == 31
    paper = tmp_path / "paper.csv"
    paper.write_text("strategy,test_set,accuracy\n1,pristine,80.0\n")
    assert "(80.00, " in table(runs, paper_csv=paper)
    for f in (figure3(runs, tmp_path), figure4(runs, tmp_path, dataset=DS)):
        assert f.stat().st_size > 10_000 and f.read_bytes()[:4] == b"\x89PNG"


def test_figure4_redraws_from_eval_json_without_checkpoints(tmp_path, capsys):
    """eval.json records Figure 4's confidences (those the checkpoint gives); the figure redraws from them once the
    checkpoint is gone (committed runs keep none), leaves out and names a strategy with neither, and with no
    strategy to draw writes nothing."""
    from iqals_fast.config import FIG4_CLASSES, FIG4_SIGMAS
    from iqals_fast.evaluate import figure4_confidence
    from iqals_fast.runs import load_model

    runs = [train(cfg(tmp_path, f"s{s}", strategy=s, epochs=1), dataset=DS, progress=False) for s in (1, 2)]
    for r in runs:
        rec = evaluate(r, dataset=DS, suite="table2")["figure4"]
        assert rec["picks"] == [int(np.flatnonzero(DS.test_y == c)[0]) for c in FIG4_CLASSES]
        assert rec["sigmas"] == list(FIG4_SIGMAS) and np.shape(rec["confidence"]) == (4, len(FIG4_SIGMAS))
        direct = figure4_confidence(load_model(r, "cpu")[0], DS)["confidence"]
        np.testing.assert_allclose(rec["confidence"], direct, atol=1e-5)
    first = figure4(runs, tmp_path / "a", dataset=DS).read_bytes()
    for r in runs:
        (r / "checkpoint.pt").unlink()
    assert figure4(runs, tmp_path / "b", dataset=DS).read_bytes() == first  # the same figure, from eval.json alone
    e = json.loads((runs[1] / "eval.json").read_text())
    del e["figure4"]
    (runs[1] / "eval.json").write_text(json.dumps(e))
    capsys.readouterr()
    assert figure4(runs, tmp_path / "c", dataset=DS).is_file()
    assert "Figure 4 leaves out strategies 2" in capsys.readouterr().out
    assert figure4(runs[1:], tmp_path / "b", dataset=DS) is None  # nothing to draw: the earlier figure stays
    assert "Figure 4 not drawn" in capsys.readouterr().out and (tmp_path / "b" / "figure4.png").read_bytes() == first


def test_eval_is_reproducible(tmp_path):
    r = train(cfg(tmp_path, "e", epochs=1), dataset=DS, progress=False)
    a = evaluate(r, dataset=DS)["results"]
    b = evaluate(r, dataset=DS)["results"]
    assert a == b


def test_cli_end_to_end_on_synthetic(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--strategy", "5", "--data", "synthetic", "--epochs", "1", "--train-subset", "200",
                 "--out", str(out), "--no-progress"]) == 0
    assert main(["eval", str(out)]) == 0
    assert main(["table", str(out)]) == 0
    assert "MIX_noise + IQA-LS" in capsys.readouterr().out
    assert main(["figures", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "figure3.png").is_file() and (tmp_path / "fig" / "figure4.png").is_file()
    assert main(["distort", "--data", "synthetic", "-n", "3", "--out", str(tmp_path / "dist")]) == 0
    assert len(list((tmp_path / "dist").glob("*.png"))) == 3 + 3 * 9 + 1


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["train", "--strategy", "10"], "unknown strategy '10'"),
        (["train", "--strategy", "x"], "unknown strategy 'x'"),
        (["train", "--epochs", "0"], "positive integer"),
    ],
)
def test_cli_argument_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train", "--data", "synthetic"], ["eval", "some-run"], ["figures", "some-run"],
                                     ["bench", "--data", "synthetic"], ["reproduce", "--protocol", "small"]])
def test_cli_unusable_device_is_one_clear_error(command, tmp_path, capsys):
    argv = command + ["--device", "nodevice"]
    if command[0] in ("train", "bench", "figures", "reproduce"):
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"iqals-fast {command[0]}: error: --device 'nodevice' is not usable here" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_cli_data_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.tar.gz' not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--transform", "cube", "--out", str(tmp_path / "r")]) == 2
    assert "unknown transform" in capsys.readouterr().err


@pytest.mark.data
def test_real_cifar_archive_strategy9_smoke(tmp_path):
    """The issue's acceptance command, shrunk: strategy 9 on the real JPEG archive, then eval/table/figures."""
    from conftest import ARCHIVE

    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 archive not found at {ARCHIVE}")
    out = tmp_path / "real"
    assert main(["train", "--strategy", "9", "--data", str(ARCHIVE), "--epochs", "1", "--train-subset", "200",
                 "--out", str(out), "--no-progress"]) == 0
    cfgj = json.loads((out / "config.json").read_text())
    assert cfgj["dataset"]["classes"][0] == "airplane" and cfgj["dataset"]["n_train"] == 200
    assert main(["eval", str(out), "--test-subset", "500"]) == 0
    res = json.loads((out / "eval.json").read_text())["results"]
    assert res["pristine"]["n"] == 500
    assert res["blur1"]["mean_ssim"] > res["blur3"]["mean_ssim"] > res["noise3"]["mean_ssim"] > 0
    assert main(["figures", str(out), "--out", str(tmp_path / "fig")]) == 0


def test_compiled_step_is_one_graph_with_the_custom_ops():
    """The forward + loss that --compile compiles traces as one graph: the C++ LRN is a custom op node."""
    import torch._dynamo

    from iqals_fast.ops import dispatch
    from iqals_fast.train import make_forward

    c = TrainConfig(compile=True)
    model = PaperCNN(seed=0)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", torch.device("cpu"))
    fwd = make_forward(model, loss_fn, c, torch.device("cpu"))
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    y, s = torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 0.9, 0.5, 0.7])
    explained = torch._dynamo.explain(fwd)(x, y, s)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "iqals_fast.lrn" in explained.graphs[0].code
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """--compile changes float rounding only: same losses and weights as eager within float tolerance (in
    float32: under bf16 inductor rounds its fused intermediates differently, at bf16's 2^-8, not float32's)."""
    eager = train(cfg(tmp_path, "eager", epochs=2, precision="fp32"), dataset=DS, progress=False)
    comp = train(cfg(tmp_path, "comp", epochs=2, compile=True, precision="fp32"), dataset=DS, progress=False)
    a = torch.load(eager / "checkpoint.pt", weights_only=True)
    b = torch.load(comp / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-3, atol=1e-5, msg=k)
    for ra, rb in zip(a["history"], b["history"]):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4) and rb["train_acc"] == ra["train_acc"]


# ---------------------------------------------------------------------------------------------------
# No run silently corrupted: non-finite training, a full disk, changed or moved data on --resume.


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_a_non_finite_loss_or_weights_stop_the_run_keeping_the_last_good_checkpoint(tmp_path, monkeypatch, what):
    """Epoch 2 of 3 (4 steps an epoch) turns NaN: the run stops there, the checkpoint keeps epoch 1, and
    metrics.jsonl stays strict JSON (no bare NaN)."""
    real_make_step, calls = training.make_step, []

    def make_step(model, *a):
        step = real_make_step(model, *a)

        def poisoned(*b):
            calls.append(1)
            loss, correct = step(*b)
            if what == "loss" and len(calls) == 6:
                loss = loss * float("nan")
            if what == "weights" and len(calls) == 8:  # after epoch 2's last step: its loss is finite
                with torch.no_grad():
                    model.fc3.weight[0, 0] = float("inf")
            return loss, correct

        return poisoned

    monkeypatch.setattr(training, "make_step", make_step)
    c = cfg(tmp_path, "nan", strategy=1, epochs=3)
    run = c.run_dir()
    expected = "the loss is nan" if what == "loss" else "the weights hold non-finite values"
    with pytest.raises(RunError, match=f"epoch 2: {expected}: training stopped .*keeps epoch 1, the last good one"):
        train(c, dataset=DS, progress=False)
    state = runs.load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1]
    assert not (run / runs.LOCK).exists()


def test_metrics_jsonl_is_strict_json(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        runs.write_metrics(tmp_path, [{"epoch": 1, "loss": float("nan")}])
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's checkpoint: half written, then the disk is full
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    c = cfg(tmp_path, "full", strategy=1, epochs=2, lr_step_epochs=2)  # one lr stage: no stage1.pt among the saves
    run = c.run_dir()
    with pytest.raises(RunError) as e:
        train(c, dataset=DS, progress=False)
    msg = str(e.value)
    assert "epoch 2: the checkpoint could not be written: No space left on device (the disk is full)" in msg
    assert str(run / "checkpoint.pt") in msg and "still holds epoch 1" in msg
    assert runs.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]  # no temp, no lock
    monkeypatch.setattr(torch, "save", real)
    train(c, dataset=DS, progress=False, resume=True)  # space freed: --resume finishes it
    assert runs.load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def _image_folders(root, seed=0):
    """A 2-class dataset of class folders: 8 train and 4 test PNG images a class, 32 x 32."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 8), ("test", 4)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_resume_compares_the_data_not_the_path_naming_them(tmp_path, monkeypatch):
    """The same data resume under another path (absolute for relative, a copy); changed images at the
    same path are refused."""
    monkeypatch.chdir(tmp_path)
    _image_folders(tmp_path / "imgs")

    def c(data):
        return TrainConfig(strategy=1, data=data, epochs=4, batch_size=8, seed=0, out=str(tmp_path / "run"))

    run = train(c("imgs"), progress=False, stop_after=1)
    train(c(str(tmp_path / "imgs")), progress=False, resume=True, stop_after=1)  # absolute for relative
    shutil.copytree(tmp_path / "imgs", tmp_path / "copy")
    train(c(str(tmp_path / "copy")), progress=False, resume=True, stop_after=1)  # a copy
    assert runs.load_checkpoint(run / "checkpoint.pt")["epoch"] == 3
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "cat" / "0.png")
    was = json.loads((run / "config.json").read_text())["dataset"]["checksum"]
    with pytest.raises(RunError, match=f"the data at imgs differ from the run's .imgs.: checksum [0-9a-f]+ != {was}"):
        train(c("imgs"), progress=False, resume=True)
    assert runs.load_checkpoint(run / "checkpoint.pt")["epoch"] == 3


@pytest.mark.parametrize("failure", [ValueError("label 12 of image 3 is out of range"), KeyboardInterrupt()])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_run_directory(tmp_path, monkeypatch, failure):
    def fail(*a, **k):
        raise failure

    monkeypatch.setattr(training, "epoch_batches", fail)
    c = cfg(tmp_path, "deeper/new", strategy=1, epochs=2)
    with pytest.raises(type(failure)):
        train(c, dataset=DS, progress=False)
    assert not (tmp_path / "deeper").exists()
    existing = tmp_path / "mine"  # a directory the user made is kept, emptied of what the failed run wrote
    existing.mkdir()
    with pytest.raises(type(failure)):
        train(cfg(tmp_path, "mine", strategy=1, epochs=2), dataset=DS, progress=False)
    assert existing.is_dir() and not list(existing.iterdir())
