"""The CPU training step in fp32 and bf16, with and without the heap settings (iqals_fast/_alloc.py).

The step is ``train``'s own (make_step: eager, channels_last, the dispatched C++ LRN, batch 100 of real
CIFAR-10 images). Rows:

- ``fp32``: the default before bf16 (``--precision fp32``);
- ``bf16, LRN via fp32 copies``: bf16 autocast with the LRN computed on float32 copies of its bf16
  input and cast back (what ops/cpu.py did before the LRN read bf16);
- ``bf16``: bf16 autocast, the LRN reading and writing bf16 (``--precision bf16``, the default here).

Each row runs in two processes: one with glibc's default heap (``alloc off``), one where
``_alloc.keep_freed_memory()`` was called first (``alloc on``, what ``train`` does). The two processes
take turns, one round each, so the rows are paired in time; per round and row, ``steps`` steps timed by
torch.utils.benchmark.Timer (as iqals_fast/throughput.py does), and getrusage's minor faults and system
time over the same steps. Medians over the rounds. About 2 minutes with the defaults on 2 cores:

    python bench/train_precision.py --data ../shared/data/cifar10-jpeg.tar.gz [--threads 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROWS = ("fp32", "bf16, LRN via fp32 copies", "bf16")


def _child(conn, data: str, alloc: bool, threads: list[int], steps: int, batch: int) -> None:
    if alloc:
        from iqals_fast._alloc import keep_freed_memory

        assert keep_freed_memory(), "mallopt refused"
    import torch
    import torch.nn.functional as F
    from torch.utils.benchmark import Timer

    from iqals_fast.data.sources import load
    from iqals_fast.distributed import World
    from iqals_fast.model import PaperCNN, lrn_tf, max_pool_same
    from iqals_fast.ops import dispatch
    from iqals_fast.train import TrainConfig, make_optimizer, make_step

    class CastLRN(PaperCNN):
        """PaperCNN.forward with the LRN on float32 copies of its (bf16) input, cast back: the old path."""

        def forward(self, x):
            def lrn(t):
                return lrn_tf(t.float()).to(t.dtype)

            x = lrn(F.relu(max_pool_same(self.conv1(x))))
            x = max_pool_same(lrn(F.relu(self.conv2(x))))
            return self._head(x)

    ds = load(data)
    x = torch.from_numpy(ds.train_x[:batch])
    y = torch.from_numpy(ds.train_y[:batch])
    on_true = torch.linspace(0.6, 1.0, batch)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", torch.device("cpu"))
    steps_of = {}
    for row in ROWS:
        cfg = TrainConfig(precision="fp32" if row == "fp32" else "bf16", compile=False, channels_last=True)
        model = (CastLRN if "copies" in row else PaperCNN)(seed=0).to(memory_format=torch.channels_last)
        opt = make_optimizer(model, 0.01, 0.004)
        steps_of[row] = make_step(model, opt, loss_fn, cfg, torch.device("cpu"), World())
    for t in threads:
        torch.set_num_threads(t)
        for step in steps_of.values():
            for _ in range(3):
                step(x, y, on_true)
    conn.send("ready")
    while conn.recv() == "round":
        out = {}
        for t in threads:
            torch.set_num_threads(t)
            for row, step in steps_of.items():
                timer = Timer("step(x, y, on_true)", globals={"step": step, "x": x, "y": y, "on_true": on_true},
                              num_threads=t)
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                seconds = timer.timeit(steps).times[0] * steps
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                out[t, row] = (batch * steps / seconds, (r1.ru_minflt - r0.ru_minflt) / steps,
                               1e3 * (r1.ru_stime - r0.ru_stime) / steps)
        conn.send(out)


def _cpu() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        return f"{names[0]} x {len(names)}"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per row and round")
    p.add_argument("--batch", type=int, default=100)
    a = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    children = {}
    for alloc in (False, True):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, a.data, alloc, a.threads, a.steps, a.batch), daemon=True)
        proc.start()
        children[alloc] = (parent, proc)
    for parent, _ in children.values():
        assert parent.recv() == "ready"
    results: dict = {}
    t0 = time.perf_counter()
    for _ in range(a.rounds):
        for alloc, (parent, _) in children.items():
            parent.send("round")
            for (t, row), v in parent.recv().items():
                results.setdefault((t, row, alloc), []).append(v)
    for parent, proc in children.values():
        parent.send("stop")
        proc.join()
    print(f"# training step, batch {a.batch}, real CIFAR-10, eager channels_last, dispatched LRN: {_cpu()}, "
          f"{a.rounds} paired rounds of {a.steps} steps ({time.perf_counter() - t0:.0f} s)\n")
    print("| threads | step | heap | images/s (median) | vs fp32 default | minor faults/step | system ms/step "
          "| rounds (img/s) |")
    print("|---:|---|---|---:|---:|---:|---:|---|")
    for t in a.threads:
        base = statistics.median(v[0] for v in results[t, "fp32", False])
        for row in ROWS:
            for alloc in (False, True):
                vs = results[t, row, alloc]
                ips = statistics.median(v[0] for v in vs)
                print(f"| {t} | {row} | {'kept (_alloc)' if alloc else 'glibc default'} | {ips:,.0f} | {ips / base:.2f}x | "
                      f"{statistics.median(v[1] for v in vs):,.0f} | {statistics.median(v[2] for v in vs):.1f} | "
                      f"{', '.join(f'{v[0]:.0f}' for v in vs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
