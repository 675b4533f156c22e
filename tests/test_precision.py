"""Training precision (TrainConfig.precision): the default per device, what config.json records, resume, the
CLI flags, that bf16 autocast runs the network in bf16 and the loss in float32, and the heap settings
(iqals_fast/_alloc.py) that stop the step's buffers from faulting in again every step."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import iqals_fast.train as training
from iqals_fast import _alloc, runs
from iqals_fast.cli import build_parser
from iqals_fast.data.sources import synthetic
from iqals_fast.model import PaperCNN
from iqals_fast.ops import dispatch
from iqals_fast.runs import RunError
from iqals_fast.train import TrainConfig, default_precision, make_forward, train

DS = synthetic(100, 20)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


def cfg(tmp_path, name="r", **kw):
    return TrainConfig(**{**dict(strategy=1, data="synthetic", epochs=2, train_subset=100, batch_size=50, seed=0,
                                 out=str(tmp_path / name)), **kw})


def config_json(run) -> dict:
    return json.loads((run / runs.CONFIG).read_text())


# -- the default, and what validate() settles ------------------------------------------------------------


def test_default_precision_per_device(monkeypatch):
    assert default_precision(torch.device("cuda")) == "fp32"  # not measured on GPUs yet
    monkeypatch.setattr(training, "native_bf16", lambda: True)
    assert default_precision(CPU) == "bf16" and TrainConfig().amp_dtype(CPU) is torch.bfloat16
    monkeypatch.setattr(training, "native_bf16", lambda: False)  # emulated bf16 is slower than float32
    assert default_precision(CPU) == "fp32" and TrainConfig().amp_dtype(CPU) is None
    assert TrainConfig(precision="bf16").amp_dtype(CPU) is torch.bfloat16
    assert TrainConfig(precision="fp32").amp_dtype(CPU) is None


def test_native_bf16_is_what_the_cpu_reports():
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.is_file() else []
    if not flags:
        pytest.skip("no /proc/cpuinfo here")
    assert training.native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_validate_settles_the_precision_and_refuses_others(tmp_path):
    c = cfg(tmp_path)
    c.validate()
    assert c.precision == default_precision(CPU)
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, got 'fp16'"):
        cfg(tmp_path, precision="fp16").validate()


# -- config.json, resume ---------------------------------------------------------------------------------


def test_a_run_records_its_precision_and_resumes_in_it(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: called.append(True) or True)
    full = train(cfg(tmp_path, "full", precision="fp32"), dataset=DS, progress=False)
    assert called  # train applies the heap settings (iqals_fast/_alloc.py)
    part = train(cfg(tmp_path, "part", precision="fp32"), dataset=DS, progress=False, stop_after=1)
    assert config_json(part)["precision"] == "fp32"
    with pytest.raises(RunError, match="precision was 'fp32', now 'bf16'"):  # one precision a run
        train(cfg(tmp_path, "part", precision="bf16"), dataset=DS, progress=False, resume=True)
    monkeypatch.setattr(training, "native_bf16", lambda: True)  # the default bf16, wherever this runs
    assert cfg(tmp_path, "ft", finetune_from=str(part)).settle_precision(CPU) == "fp32"  # a fine-tune: its source's
    train(cfg(tmp_path, "part"), dataset=DS, progress=False, resume=True)  # None: the run's own, whatever the default
    a = runs.load_checkpoint(full / runs.CHECKPOINT)
    b = runs.load_checkpoint(part / runs.CHECKPOINT)
    assert b["config"]["precision"] == "fp32"
    for k in a["model"]:  # the resumed epoch ran in fp32: the same weights as the run trained in one go
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


def test_a_new_run_records_the_default_and_bf16_resumes_in_bf16(tmp_path):
    run = train(cfg(tmp_path, precision="bf16"), dataset=DS, progress=False, stop_after=1)
    assert config_json(run)["precision"] == "bf16"
    c = cfg(tmp_path)
    c.validate()  # what a resume without --precision trains in
    assert c.precision == "bf16"
    new = cfg(tmp_path, "new")
    train(new, dataset=DS, progress=False, stop_after=1)
    assert config_json(tmp_path / "new")["precision"] == new.precision == default_precision(CPU)


def test_a_run_from_before_the_option_resumes_in_fp32(tmp_path):
    """config.json and the checkpoint of an older run carry ``bf16`` (False unless --bf16 on CUDA) and no
    ``precision``: the run was float32, and resumes so."""
    run = train(cfg(tmp_path, precision="fp32"), dataset=DS, progress=False, stop_after=1)
    c = config_json(run)
    del c["precision"]
    (run / runs.CONFIG).write_text(json.dumps({**c, "bf16": False}))
    state = runs.load_checkpoint(run / runs.CHECKPOINT)
    del state["config"]["precision"]
    state["config"]["bf16"] = False
    runs.save_checkpoint(run, state)
    with pytest.raises(RunError, match="precision was 'fp32', now 'bf16'"):
        train(cfg(tmp_path, precision="bf16"), dataset=DS, progress=False, resume=True)
    old = cfg(tmp_path)
    train(old, dataset=DS, progress=False, resume=True)
    assert old.precision == "fp32" and runs.load_checkpoint(run / runs.CHECKPOINT)["epoch"] == 2


def test_cli_precision_flags():
    p = build_parser()
    assert p.parse_args(["train"]).precision is None
    assert p.parse_args(["train", "--bf16"]).precision == "bf16"  # the old flag, an alias
    assert p.parse_args(["train", "--precision", "fp32"]).precision == "fp32"
    assert p.parse_args(["train", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--precision", "fp16"])


# -- what autocast runs in bf16 --------------------------------------------------------------------------


class Dtypes(TorchDispatchMode):
    """The output dtype of every op run (below autocast: the casts it inserts are ops too)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(first, torch.Tensor):
            self.seen.append((str(func.overloadpacket.__name__), first.dtype, tuple(first.shape)))
        return out

    def dtypes(self, name: str) -> set[torch.dtype]:
        return {d for n, d, _ in self.seen if n == name}


def _one_step(precision: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    on_true = torch.linspace(0.5, 1.0, 8)
    model = PaperCNN(seed=0).to(memory_format=torch.channels_last)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", CPU)
    forward = make_forward(model, loss_fn, TrainConfig(precision=precision, channels_last=True), CPU)
    with Dtypes() as mode:
        loss, _ = forward(x, y, on_true)
        loss.backward()
    return mode, loss, model


def test_bf16_autocast_runs_the_network_in_bf16_and_the_loss_in_float32():
    mode, loss, model = _one_step("bf16")
    assert mode.dtypes("convolution") == {torch.bfloat16}
    assert mode.dtypes("convolution_backward") == {torch.bfloat16}
    assert mode.dtypes("addmm") == {torch.bfloat16}  # the fully connected layers
    assert mode.dtypes("max_pool2d_with_indices") == {torch.bfloat16}
    assert mode.dtypes("lrn") == mode.dtypes("lrn_backward") == {torch.bfloat16}  # no float32 copy around it
    assert loss.dtype == torch.float32
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())  # float32 master weights
    # the casts: the uint8 images to float32 (standardize), the standardised input to bf16, the logits to float32
    # (and their gradient back), the weights and biases to bf16 (and their gradients back); no activation inside
    # the network is cast
    casts = {(d, s) for n, d, s in mode.seen if n == "_to_copy"}
    both = (torch.bfloat16, torch.float32)
    params = {(d, tuple(p.shape)) for p in model.parameters() for d in both}
    assert casts <= params | {(torch.float32, (8, 32, 32, 3)), (torch.bfloat16, (8, 3, 32, 32))} | {
        (d, (8, 10)) for d in both}, casts
    f32, _, _ = _one_step("fp32")
    assert torch.bfloat16 not in {d for _, d, _ in f32.seen}


def test_bf16_step_computes_the_float32_steps_loss_within_bf16_precision():
    """The same first-step loss: bf16 rounds each layer's inputs to 8 bits (2^-9 relative each); over the
    five layers that leaves the loss within 1% of float32's (measured: ~1e-3)."""
    a = _one_step("bf16")[1]
    b = _one_step("fp32")[1]
    torch.testing.assert_close(a, b, rtol=1e-2, atol=0)


# -- the heap settings -----------------------------------------------------------------------------------

FAULTS = textwrap.dedent("""
    import resource, sys
    import torch
    from iqals_fast import _alloc
    from iqals_fast.distributed import World
    from iqals_fast.model import PaperCNN
    from iqals_fast.ops import dispatch
    from iqals_fast.train import TrainConfig, make_optimizer, make_step
    if sys.argv[1] == "kept":
        assert _alloc.keep_freed_memory()
    elif sys.argv[1] == "mapped":  # glibc's starting threshold, held fixed (a fixed M_MMAP_THRESHOLD stops its growth)
        assert _alloc._mallopt()(_alloc.M_MMAP_THRESHOLD, 128 * 1024)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 32, 32, 3), dtype=torch.uint8, generator=g)
    y, on_true = torch.randint(0, 10, (100,), generator=g), torch.linspace(0.5, 1.0, 100)
    model = PaperCNN(seed=0).to(memory_format=torch.channels_last)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", torch.device("cpu"))
    cfg = TrainConfig(precision="bf16", channels_last=True, compile=False)
    step = make_step(model, make_optimizer(model, 0.01, 0.004), loss_fn, cfg, torch.device("cpu"), World())
    for _ in range(3):
        step(x, y, on_true)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step(x, y, on_true)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
FAULT_BOUND = 20_000
"""Minor faults in 20 steps (batch 100, bf16, channels_last, one thread). Measured on the 2-core CPUs: 5-3,200 with
the settings; 525,000-530,000 with every block of 128 KiB or more mapped afresh (glibc's starting threshold, held
fixed). glibc's own default lands anywhere between: its threshold grows to the largest mapped block freed so far,
so whether the step's ~13-26 MB buffers keep being mapped depends on the order of the first frees (measured 1,600,
13,700, 33,000-35,000 and 120,000-165,000 on the same step): a bound on it cannot hold, so the test's control is
the fixed threshold, the case the settings exist to rule out."""


@pytest.mark.slow
def test_the_training_step_stops_faulting_with_the_heap_settings():
    if not _alloc.keep_freed_memory():
        pytest.skip("no glibc mallopt here: the settings do not apply")

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    kept, mapped = faults("kept"), faults("mapped")
    assert kept < FAULT_BOUND, kept
    assert mapped > FAULT_BOUND, mapped  # the bound separates the two: a heap that maps its large blocks fails it


def test_evaluation_applies_the_heap_settings(tmp_path, monkeypatch):
    import iqals_fast.evaluate as ev

    run = train(cfg(tmp_path, epochs=1, precision="fp32"), dataset=DS, progress=False)
    called = []
    monkeypatch.setattr(ev, "keep_freed_memory", lambda: called.append(True) or True)
    ev.evaluate(run, dataset=DS, suite="table2", test_subset=20)
    assert called
