"""The run directory (runs.py) and the atomic writes under it (_io.py)."""

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
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
    assert loads == {"runs.py"} and pickles <= {"data/sources.py"}
    assert "weights_only=True" in (PACKAGE / "runs.py").read_text() and "weights_only=False" not in "".join(
        p.read_text() for p in PACKAGE.rglob("*.py"))


# ---------------------------------------------------------------------------------------------------
# Trust: a checkpoint runs no code, a damaged file is a RunError naming it, one writer at a time.


class _Planted:
    """Unpickled with ``weights_only=False``, makes the directory ``marker``: the code a checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _saved_run(tmp_path, epochs=2, **kw):
    cfg = TrainConfig(strategy=1, data="synthetic", epochs=epochs, seed=3, **kw)
    run = tmp_path / "r"
    _, model, opt = _open(run, cfg)
    runs.save(run, model, opt, _history(1), cfg)
    return run, cfg


def _damage(ck: Path, how: str, marker: Path) -> None:
    good = runs.load_checkpoint(ck)
    if how == "planted":  # torch.save's own format, a payload among the weights
        torch.save({**good, "model": {"conv1.weight": _Planted(marker)}}, ck)
    elif how == "planted-raw-pickle":
        import pickle

        ck.write_bytes(pickle.dumps({"model": _Planted(marker)}))
    elif how == "truncated":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    elif how == "empty":
        ck.write_bytes(b"")
    elif how == "random-bytes":
        ck.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "wrong-keys":
        torch.save({"weights": good["model"], "step": 3}, ck)
    elif how == "not-a-dict":
        torch.save([good["model"]], ck)
    elif how == "wrong-shapes":
        torch.save({**good, "model": {**good["model"], "fc1.weight": torch.zeros(3, 3)}}, ck)
    elif how == "missing-layer":
        torch.save({**good, "model": {k: v for k, v in good["model"].items() if k != "fc3.bias"}}, ck)
    elif how == "nan-weights":
        torch.save({**good, "model": {**good["model"], "fc2.weight": torch.full((192, 384), float("nan"))}}, ck)
    else:
        raise AssertionError(how)


DAMAGES = ["planted", "planted-raw-pickle", "truncated", "empty", "random-bytes", "wrong-keys", "not-a-dict",
           "wrong-shapes", "missing-layer", "nan-weights"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_or_planted_checkpoint_runs_no_code_and_is_a_runerror_naming_it(tmp_path, how):
    """On --resume, on loading the model (eval, figures) and on reproduce's finished-run check."""
    run, cfg = _saved_run(tmp_path)
    ck, marker = run / runs.CHECKPOINT, tmp_path / "planted-code-ran"
    _damage(ck, how, marker)
    attempts = {"resume": lambda: _open(run, cfg, resume=True), "load_model": lambda: runs.load_model(run),
                "finished": lambda: runs.finished(run, 2)}
    if how in ("wrong-shapes", "missing-layer"):
        del attempts["finished"]  # a checkpoint is matched against the model only where one is built
    for name, attempt in attempts.items():
        with pytest.raises(RunError, match=str(ck).replace(".", r"\.")):
            attempt()
        assert not marker.exists(), name


def test_what_training_saves_loads_with_weights_only(tmp_path):
    run, _ = _saved_run(tmp_path)
    state = torch.load(run / runs.CHECKPOINT, weights_only=True)
    assert set(state) == {"model", "optimizer", "epoch", "history", "config"} and state["epoch"] == 1


@pytest.mark.parametrize("text", ['{"strategy": 1, "seed"', "not json at all", "", "[1, 2, 3]", '{"strategy": 1}',
                                  b"\xff\xfe\x00garbage"])
def test_a_damaged_config_json_is_a_runerror_naming_it_on_load_and_on_resume(tmp_path, text):
    run, cfg = _saved_run(tmp_path)
    p = run / runs.CONFIG
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    for attempt in (lambda: runs.load_run_config(run), lambda: runs.load_model(run),
                    lambda: _open(run, cfg, resume=True)):
        with pytest.raises(RunError, match=str(p).replace(".", r"\.")):
            attempt()


def test_config_and_checkpoint_of_different_runs_are_refused(tmp_path):
    """What two writers used to leave: config.json of one run, checkpoint.pt of another."""
    run, cfg = _saved_run(tmp_path)
    c = runs.load_run_config(run)
    c["strategy"] = 5
    (run / runs.CONFIG).write_text(json.dumps(c))
    with pytest.raises(RunError, match="come from different runs .strategy 5 vs 1"):
        runs.load_model(run)


def test_opening_a_run_removes_the_temp_files_a_killed_write_left(tmp_path):
    run, cfg = _saved_run(tmp_path)
    stale = [run / ".checkpoint.pt.k1ll3d_x.tmp", run / ".metrics.jsonl.abc.tmp", run / ".config.json.q.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    other = run / ".eval.json.x.tmp"  # an eval may be writing it now: not training's to remove
    other.write_bytes(b"")
    assert _open(run, cfg, resume=True)[0][0] == 1
    assert not any(p.exists() for p in stale) and other.exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from iqals_fast import runs
    with runs.lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def _train_tiny(run, **kw):
    from iqals_fast.train import train

    c = TrainConfig(strategy=1, data="synthetic", epochs=1, train_subset=20, batch_size=10, seed=0, out=str(run))
    return train(c, dataset=DS, progress=False, **kw)


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys,
                                                                                                monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"in use by another training process .pid {holder.pid} on "
                                           f"{socket.gethostname()}"):
            _train_tiny(run)
        assert not (run / runs.CONFIG).exists()  # refused before anything was written
    finally:
        holder.kill()  # SIGKILL: the holder never removes its lock file
        holder.wait()
        holder.stdout.close()
    assert json.loads((run / runs.LOCK).read_text())["pid"] == holder.pid  # left behind, but no longer held
    capsys.readouterr()
    _train_tiny(run)
    assert f"left by a process that is gone (pid {holder.pid} on" in capsys.readouterr().err
    assert runs.finished(run, 1) and not (run / runs.LOCK).exists()


def test_training_holds_the_lock_for_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    run, seen = tmp_path / "r", []
    real = runs.save

    def save(*a, **k):  # while an epoch is saved: the lock is held, by this process, against any other opener
        seen.append(json.loads((run / runs.LOCK).read_text())["pid"])
        with pytest.raises(RunError, match="in use by another training process"):
            with runs.lock(run):
                pass
        return real(*a, **k)

    monkeypatch.setattr(runs, "save", save)
    _train_tiny(run)
    assert seen == [os.getpid()] and not (run / runs.LOCK).exists()


# ---------------------------------------------------------------------------------------------------
# The stage-1 snapshot and the runs fine-tuned from it (issue 17's ablation)


def _source(tmp_path, strategy=2, seed=0, epochs=3, lr_step=2, name="src"):
    """A trained 0-1 label run: ``epochs`` epochs, lr step after ``lr_step`` (so stage 1 ends there)."""
    from iqals_fast.train import train

    cfg = TrainConfig(strategy=strategy, data="synthetic", epochs=epochs, lr_step_epochs=lr_step, seed=seed,
                      batch_size=20, out=str(tmp_path / name))
    return train(cfg, dataset=DS, progress=False), cfg


def _finetune_cfg(tmp_path, source, strategy=3, **kw):
    opts = {"data": "synthetic", "epochs": 3, "lr_step_epochs": 2, "seed": 0, "batch_size": 20,
            "out": str(tmp_path / "ft"), **kw}
    return TrainConfig(strategy=strategy, finetune_from=str(source), **opts)


def test_the_stage1_snapshot_is_the_weights_at_the_end_of_the_first_lr_stage(tmp_path):
    """stage1.pt = the checkpoint's weights after epoch lr_step_epochs (a run stopped there), weights only; a
    run with one lr stage writes none."""
    from iqals_fast.train import train

    run, cfg = _source(tmp_path)
    snap = runs.load_checkpoint(run / runs.STAGE1, keys=runs.SNAPSHOT_KEYS)
    assert snap["epoch"] == 2 and set(snap) == set(runs.SNAPSHOT_KEYS) and snap["config"] == asdict(cfg)
    with pytest.raises(RunError, match="expected the keys"):  # not a checkpoint to resume from
        runs.load_checkpoint(run / runs.STAGE1)
    stopped = train(TrainConfig(**{**asdict(cfg), "out": str(tmp_path / "stopped")}), dataset=DS, progress=False,
                    stop_after=2)
    at2 = runs.load_checkpoint(stopped / runs.CHECKPOINT)
    assert at2["epoch"] == 2
    for k, v in at2["model"].items():  # the same seed and data on the same CPU: bit for bit
        torch.testing.assert_close(snap["model"][k], v, rtol=0, atol=0)
    assert runs.load_checkpoint(run / runs.CHECKPOINT)["epoch"] == 3
    one_stage, _ = _source(tmp_path, epochs=2, lr_step=2, name="one-stage")
    assert not (one_stage / runs.STAGE1).exists() and runs.stage1_end(PAPER.scaled(2, None, 2)) is None


def test_a_finetuned_run_starts_from_exactly_the_snapshot_and_holds_only_its_own_epochs(tmp_path):
    from iqals_fast.train import train

    src, _ = _source(tmp_path)
    snap = runs.load_checkpoint(src / runs.STAGE1, keys=runs.SNAPSHOT_KEYS)
    cfg = _finetune_cfg(tmp_path, src)
    (start, history), model, opt = _open(tmp_path / "opened", cfg)
    assert (start, history) == (2, []) and not opt.state_dict()["state"]  # plain SGD: a fresh optimizer loses nothing
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snap["model"][k], rtol=0, atol=0)
    c = runs.load_run_config(tmp_path / "opened")
    assert c["finetune_from"] == str(src) and c["finetune_source"] == {"run": str(src.resolve()),
                                                                       "snapshot": "stage1.pt", "epoch": 2}
    run = train(cfg, dataset=DS, progress=False)
    assert [r["epoch"] for r in runs.read_metrics(run)] == [3] and runs.finished(run, 3)
    assert runs.read_metrics(run)[0]["lr"] == pytest.approx(PAPER.lr * PAPER.lr_decay)  # stage 2's lr
    assert not (run / runs.STAGE1).exists()
    end = runs.load_checkpoint(run / runs.CHECKPOINT)
    assert any(not torch.equal(end["model"][k], v) for k, v in snap["model"].items())  # it trained
    # resuming it needs the same source; another one is refused
    with pytest.raises(RunError, match="finetune_from was"):
        _open(run, TrainConfig(**{**asdict(cfg), "finetune_from": None}), resume=True)


def test_finetuning_refuses_a_source_that_is_not_the_counterpart_naming_it(tmp_path):
    src, _ = _source(tmp_path)

    def check(cfg, ds=DS):
        return runs.check_finetune_source(cfg, runs.describe(STRATEGIES[cfg.strategy], cfg.protocol(), ds))

    assert check(_finetune_cfg(tmp_path, src))[0] == src / runs.STAGE1
    with pytest.raises(RunError, match="strategy 2 .MIX_blur. is not an IQA-LS strategy"):
        check(_finetune_cfg(tmp_path, src, strategy=2))
    with pytest.raises(RunError, match=f"{src} is strategy 2 seed 0: strategy 5 seed 0 fine-tunes strategy 4"):
        check(_finetune_cfg(tmp_path, src, strategy=5))
    with pytest.raises(RunError, match="strategy 3 seed 1 fine-tunes strategy 2"):
        check(_finetune_cfg(tmp_path, src, seed=1))
    with pytest.raises(RunError, match=r"another protocol \(epochs 3 vs 4\)"):
        check(_finetune_cfg(tmp_path, src, epochs=4))
    with pytest.raises(RunError, match="trained on other data"):
        check(_finetune_cfg(tmp_path, src), synthetic(60, 20, seed=1))
    with pytest.raises(RunError, match="is not a training run"):
        check(_finetune_cfg(tmp_path, tmp_path / "nowhere"))
    one, _ = _source(tmp_path, epochs=2, lr_step=2, name="one")
    with pytest.raises(RunError, match="single lr stage"):
        check(_finetune_cfg(tmp_path, one, epochs=2))
    snap = (src / runs.STAGE1).read_bytes()
    (src / runs.STAGE1).unlink()
    with pytest.raises(RunError, match=f"{src}: no stage1.pt .its weights at epoch 2"):
        check(_finetune_cfg(tmp_path, src))
    (src / runs.STAGE1).write_bytes(snap[:100])
    with pytest.raises(RunError, match=f"{src / runs.STAGE1} is not a readable checkpoint"):
        check(_finetune_cfg(tmp_path, src))
    state = runs.load_checkpoint(src / runs.CHECKPOINT)
    torch.save({"model": state["model"], "epoch": 3, "config": state["config"]}, src / runs.STAGE1)
    with pytest.raises(RunError, match="holds epoch 3 of strategy 2 seed 0, not epoch 2"):
        check(_finetune_cfg(tmp_path, src))
    # a refused fine-tuned run leaves no directory behind
    from iqals_fast.train import train

    with pytest.raises(RunError, match="not epoch 2"):
        train(_finetune_cfg(tmp_path, src, out=str(tmp_path / "refused")), dataset=DS, progress=False)
    assert not (tmp_path / "refused").exists()
