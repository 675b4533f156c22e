"""The run directory (runs.py) and the atomic writes under it (_io.py)."""

import ast
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import iqals_fast
from iqals_fast import _io, runs
from iqals_fast.config import PAPER, STRATEGIES
from iqals_fast.data.sources import synthetic
from iqals_fast.distributed import World
from iqals_fast.model import PaperCNN
from iqals_fast.runs import RunError
from iqals_fast.train import TrainConfig, make_optimizer

PACKAGE = Path(iqals_fast.__file__).parent
DS = synthetic(60, 20)


def _open(run, cfg, resume=False):
    model = PaperCNN(seed=cfg.seed)
    opt = make_optimizer(model, 0.1, 0.004)
    desc = runs.describe(STRATEGIES[cfg.strategy], cfg.protocol(), DS)
    return runs.open_run(run, cfg, desc, model, opt, resume=resume, world=World()), model, opt


def _history(k):
    return [{"epoch": e, "loss": 1.0 / e} for e in range(1, k + 1)]


def test_a_new_run_writes_its_config(tmp_path):
    cfg = TrainConfig(strategy=5, data="synthetic", epochs=3, out=str(tmp_path / "r"))
    (start, history), _, _ = _open(tmp_path / "r", cfg)
    assert (start, history) == (0, [])
    c = runs.load_run_config(tmp_path / "r")
    assert list(c) == [*asdict(cfg), "strategy_name", "protocol", "dataset", "versions"]  # config.json's order
    assert c["strategy_name"] == "MIX_noise + IQA-LS" and c["protocol"]["epochs"] == 3
    assert c["protocol"]["lr_step_epochs"] == PAPER.scaled(3).lr_step_epochs
    assert c["dataset"] == {"source": DS.source, "checksum": DS.checksum, "classes": list(DS.classes), "n_train": 60,
                            "image_size": 32}
    assert set(c["versions"]) == {"iqals_fast", "torch", "numpy", "pillow", "python", "machine", "processor"}
    assert (tmp_path / "r" / runs.CONFIG).read_text().endswith("}\n")  # indented JSON, final newline


def test_save_then_resume_restores_model_optimizer_and_history(tmp_path):
    cfg = TrainConfig(strategy=1, data="synthetic", epochs=3, seed=4)
    run = tmp_path / "r"
    _, model, opt = _open(run, cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    opt.step()
    runs.save(run, model, opt, _history(2), cfg)
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2]
    assert runs.finished(run, 2) and not runs.finished(run, 3) and not runs.finished(tmp_path / "none", 1)
    (start, history), model2, opt2 = _open(run, cfg, resume=True)
    assert start == 2 and history == _history(2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    state = runs.load_checkpoint(run / runs.CHECKPOINT)
    assert state["epoch"] == 2 and state["config"] == asdict(cfg)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_open_run_refuses_what_would_lose_or_mix_results(tmp_path):
    cfg = TrainConfig(strategy=1, data="synthetic", epochs=2, seed=1)
    run = tmp_path / "r"
    _, model, opt = _open(run, cfg)
    runs.save(run, model, opt, _history(1), cfg)
    with pytest.raises(RunError, match="already holds a run: pass --resume"):
        _open(run, cfg)
    with pytest.raises(RunError, match="seed was 1, now 2"):
        _open(run, TrainConfig(strategy=1, data="synthetic", epochs=2, seed=2), resume=True)
    with pytest.raises(RunError, match="no checkpoint"):
        _open(tmp_path / "nothing", cfg, resume=True)
    # a run written before a result key existed resumes with that key's old default, and only with it
    state = runs.load_checkpoint(run / runs.CHECKPOINT)
    del state["config"]["iqa"]
    runs.save_checkpoint(run, state)
    assert _open(run, cfg, resume=True)[0][0] == 1
    with pytest.raises(RunError, match="iqa was 'ssim', now 'gmsd'"):
        _open(run, TrainConfig(strategy=1, data="synthetic", epochs=2, seed=1, iqa="gmsd"), resume=True)
    # how fast, not what: the speed options may change on resume
    assert _open(run, TrainConfig(strategy=1, data="synthetic", epochs=2, seed=1, compile=True), resume=True)[0][0] == 1


def test_load_model(tmp_path, capsys):
    with pytest.raises(RunError, match="is not a training run"):
        runs.load_model(tmp_path)
    cfg = TrainConfig(strategy=1, data="synthetic", epochs=3, seed=2)
    run = tmp_path / "r"
    _, model, opt = _open(run, cfg)
    with pytest.raises(RunError, match="no checkpoint.pt; train it first"):
        runs.load_model(run)
    runs.save(run, model, opt, _history(1), cfg)
    loaded, c = runs.load_model(run)
    assert "unfinished (1 of 3 epochs)" in capsys.readouterr().out
    assert not loaded.training and c["seed"] == 2
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_check_device_names_an_unusable_device():
    assert runs.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device 'nodevice' is not usable here"):
        runs.check_device("nodevice")


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path):
    p = tmp_path / "sub" / "f.json"
    _io.save_json(p, {"a": 1})
    assert p.read_text() == '{\n  "a": 1\n}\n'

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_bytes(p, fail)
    assert json.loads(p.read_text()) == {"a": 1} and [q.name for q in p.parent.iterdir()] == ["f.json"]


def test_io_is_a_leaf_and_checkpoints_are_read_in_one_place():
    """_io imports nothing from the package (data, runs and reports all use it); the package's one
    ``torch.load`` is runs.load_checkpoint's and its one unpickling is CIFAR's batches in data/sources."""
    tree = ast.parse((PACKAGE / "_io.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"__future__", "json", "os", "tempfile", "pathlib"}
    assert not any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(tree))
    loads = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "torch.load(" in p.read_text()}
    pickles = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "pickle.load" in p.read_text()}
    assert loads == {"runs.py"} and pickles == {"data/sources.py"}
