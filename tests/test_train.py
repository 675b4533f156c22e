"""Training, resume, evaluation, reports and the command line, end to end on small data."""

import json

import pytest
import torch

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
    assert torch.load(part / "checkpoint.pt", weights_only=False)["epoch"] == 1
    train(cfg(tmp_path, "part"), dataset=DS, progress=False, resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(part / "checkpoint.pt", weights_only=False)
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
    """--compile changes float rounding only: same losses and weights as eager within float tolerance."""
    eager = train(cfg(tmp_path, "eager", epochs=2), dataset=DS, progress=False)
    comp = train(cfg(tmp_path, "comp", epochs=2, compile=True), dataset=DS, progress=False)
    a = torch.load(eager / "checkpoint.pt", weights_only=False)
    b = torch.load(comp / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-3, atol=1e-5, msg=k)
    for ra, rb in zip(a["history"], b["history"]):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4) and rb["train_acc"] == ra["train_acc"]


@pytest.mark.slow
def test_bench_command_reports_every_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", "synthetic", "-n", "200", "--epochs", "2", "--steps", "1", "--rounds", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"eager, plain PyTorch", "eager, dispatched LRN", "compiled, dispatched LRN"} <= set(res["model_only"])
    assert res["default"] == "eager, dispatched LRN, channels_last" and res["default"] in res["model_only"]
    assert all(r["images_per_s"] > 0 for r in res["model_only"].values())
    assert res["pipeline"]["n"] == 200 and len(res["pipeline"]["epochs_images_per_s"]) == 2
    printed = capsys.readouterr().out
    assert "full strategy-9 pipeline" in printed and printed == out.with_suffix(".md").read_text()
