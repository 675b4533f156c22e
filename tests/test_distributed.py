"""Training under torchrun: 2 CPU processes with gloo against one process, and resume under torchrun."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from iqals_fast.data.sources import synthetic
from iqals_fast.distributed import World, world
from iqals_fast.train import TrainConfig, train

WORKER = textwrap.dedent("""
    import sys
    from iqals_fast.data.sources import synthetic
    from iqals_fast.train import TrainConfig, train

    out, stop_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    cfg = TrainConfig(strategy=9, data="synthetic", epochs=3, train_subset=200, seed=1, batch_size=50, out=out,
                      precision="fp32")
    train(cfg, dataset=synthetic(300, 60), progress=False, stop_after=stop_after, resume=resume)
""")


def _torchrun(tmp_path, *args: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "IQALS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ddp"
    _torchrun(tmp_path, str(out), "1", "0")  # interrupted after epoch 1 ...
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    _torchrun(tmp_path, str(out), "10", "1")  # ... and resumed under torchrun

    single = train(TrainConfig(strategy=9, data="synthetic", epochs=3, train_subset=200, seed=1, batch_size=50,
                               out=str(tmp_path / "single"), precision="fp32"), dataset=synthetic(300, 60),
                   progress=False)
    a = torch.load(single / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    # The same images, batches and schedule; only the gradient's summation order differs (two
    # half-batch means averaged by all_reduce vs one mean), so the weights agree to float rounding.
    # (In float32: under bf16 each rank's weight gradients are rounded to bf16 before the all_reduce.)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    assert [r["epoch"] for r in b["history"]] == [1, 2, 3]
    for ra, rb in zip(a["history"], b["history"]):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["train_acc"] == ra["train_acc"]
        assert rb["mean_ssim"].keys() == ra["mean_ssim"].keys()
        for key, v in ra["mean_ssim"].items():  # the ranks' shares, summed by all_reduce, = the whole epoch's
            assert rb["mean_ssim"][key] == pytest.approx(v, rel=1e-6)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_world_comes_from_torchruns_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert world() == World(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert world() == World(2, 4, 0) and not world().main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK must lie in"):
        world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="torchrun's environment"):
        world()


def test_batch_must_split_evenly_between_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(strategy=1, data="synthetic", epochs=1, train_subset=60, batch_size=50, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="--batch-size 50 must be a multiple of the number of processes"):
        train(cfg, dataset=synthetic(100, 20), progress=False)


def test_a_last_batch_the_processes_cannot_split_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """201 images in batches of 100 on 2 processes: one rank's share of the last batch would be empty, its
    loss NaN, and DDP would average that NaN into every rank's weights. Refused before the process group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(strategy=1, data="synthetic", epochs=1, batch_size=100, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="the last batch holds 1 of the 201 training images, which 2 processes"):
        train(cfg, dataset=synthetic(201, 20), progress=False)
    assert not (tmp_path / "r").exists()
