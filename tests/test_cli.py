"""The command line on files and arguments it cannot use: one message naming the file, argument or holder
at fault and exit status 2, never a traceback; no code run from a planted checkpoint; no half-made run."""

import os
import shutil

import pytest
import torch

from iqals_fast.cli import main
from iqals_fast.config import PROTOCOLS, ReproProtocol

TINY = ["--strategy", "1", "--data", "synthetic", "--epochs", "1", "--train-subset", "100", "--batch-size", "50",
        "--seed", "0", "--no-progress"]
EVAL = ["--suite", "table2", "--test-subset", "20", "--no-progress"]


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run trained and evaluated through the command line, once; each test copies it."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("IQALS_CACHE", str(root / "cache"))
        assert main(["train", *TINY, "--out", str(root / "run")]) == 0
        assert main(["eval", str(root / "run"), *EVAL]) == 0
    return root / "run"


@pytest.fixture
def run(evaluated, tmp_path):
    return shutil.copytree(evaluated, tmp_path / "runs" / "strategy1-seed0")


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("command", ["train --resume", "eval", "figures", "reproduce"])
def test_a_planted_checkpoint_runs_no_code_and_is_refused_naming_it(run, tmp_path, monkeypatch, capsys, command):
    marker, ck = tmp_path / "planted-code-ran", run / "checkpoint.pt"
    state = torch.load(ck, weights_only=True)
    torch.save({**state, "history": [_Planted(marker)]}, ck)
    argv = {"train --resume": ["train", *TINY, "--out", str(run), "--resume"],
            "eval": ["eval", str(run), *EVAL],
            "figures": ["figures", str(run), "--out", str(tmp_path / "fig")],
            "reproduce": ["reproduce", "--data", "synthetic", "--out", str(tmp_path), "--strategies", "1",
                          "--no-progress"]}[command]
    monkeypatch.setitem(PROTOCOLS, "small", ReproProtocol("small", 1, 100, None, 20))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {ck} is not a readable checkpoint (refused by the weights-only loader" in err
    assert not marker.exists()  # the planted code did not run


def test_a_damaged_config_json_is_one_message_naming_it(run, capsys):
    (run / "config.json").write_text('{"strategy": 1, "da')
    assert main(["eval", str(run), *EVAL]) == 2
    assert f"error: {run / 'config.json'} is not valid JSON" in capsys.readouterr().err


def test_out_naming_an_existing_file_is_refused(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("mine")
    assert main(["train", *TINY, "--out", str(f)]) == 2
    assert f"error: --out {f}: {f} is a file, not a directory" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(f / "run")]) == 2
    assert f"{f} is a file, not a directory" in capsys.readouterr().err
    assert f.read_text() == "mine"


def test_device_meta_is_refused(run, capsys):
    assert main(["train", *TINY, "--device", "meta", "--out", str(run.parent / "new")]) == 2
    assert "error: --device 'meta' is not usable here" in capsys.readouterr().err
    assert main(["eval", str(run), *EVAL, "--device", "meta"]) == 2
    assert "error: --device 'meta' is not usable here" in capsys.readouterr().err
    assert not (run.parent / "new").exists()


def test_a_failing_backend_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "deep" / "new-run"
    assert main(["train", *TINY, "--backend", "dali_gpu", "--out", str(out)]) == 2
    assert "backend 'dali_gpu' is not available for 'soft_label_mse'" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()
    assert main(["train", *TINY, "--resume", "--out", str(out)]) == 2  # nothing to resume: nothing made either
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "deep").exists()


def test_a_second_train_into_a_running_runs_directory_is_refused(run, capsys):
    """The lock as the command line reports it (the two-process case: tests/test_runs.py)."""
    from iqals_fast import runs

    with runs.lock(run):
        assert main(["train", *TINY, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run} is in use by another training process (pid {os.getpid()} on" in err
