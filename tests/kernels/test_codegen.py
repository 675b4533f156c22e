"""The fused kernel's machine code for sm_90 (H100 / H200), compiled ahead of time without a GPU.

What research/triton-tuning.md's "Warps" section claims about iqals_fast/kernels/distort_and_score.py,
checked on the SASS that ``research/sass_stats.py`` profiles: by default Triton lays the chained dots'
warps along the rows and, with 4 warps on a 32-row tile, repeats half the MMA work; ``isolate_dots``
splits them 2 x 2 and issues half the MMAs per warp. If a Triton release changes its heuristic, this
fails and the note (and the kernel's CANDIDATES) need a new look.

The profile runs in a fresh process: Triton compiles nothing in a process that imported it in
interpreter mode (the test session does, tests/ops/interpreter.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.find_spec("triton")
if _spec is None or not _spec.submodule_search_locations:
    pytest.skip("triton is not installed", allow_module_level=True)
_BIN = Path(list(_spec.submodule_search_locations)[0]) / "backends" / "nvidia" / "bin"
if not (_BIN / "nvdisasm").is_file():
    pytest.skip(f"this Triton wheel ships no CUDA binary tools ({_BIN})", allow_module_level=True)


@pytest.fixture(scope="module")
def profiles() -> dict:
    # the chained dots named explicitly (not "default"): the launcher's defaults may become a candidate
    configs = ["chained_w4_r168", "iso_w4_r168", "iso_w8_r128", "stack_iso_w4_r168"]
    cmd = [sys.executable, str(ROOT / "research" / "sass_stats.py"), "--preset", "fused"]
    for c in configs:
        cmd += ["--config", c]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return {row["config"]: row for row in rows}


def test_isolated_dots_repeat_no_mma_work(profiles):
    chained, isolated = profiles["chained_w4_r168"], profiles["iso_w4_r168"]
    assert chained["num_warps"] == isolated["num_warps"] == 4
    assert chained["mma_warps"] == "[4, 1]"
    assert isolated["mma_warps"] == "[2, 2]"
    # 27 dots of 32 x 32 x 32 per channel; a warp's 16 x 16 share of one is 4 m16n8k16 MMAs
    assert isolated["mma"] == 27 * 4
    assert chained["mma"] == 2 * isolated["mma"]
    assert isolated["registers"] <= 168 and isolated["stack_bytes"] < chained["stack_bytes"]
    # the channel loop: no spills left in it, and fewer instructions per image for the same 4 warps
    assert chained["loop_spills"] > 0 and isolated["loop_spills"] == 0
    assert isolated["image_warp_instructions"] < chained["image_warp_instructions"]


def test_isolation_is_one_dot_each_not_an_unrolled_loop(profiles):
    """The trip count min(one, 1) lets the compiler drop the loop; a bare runtime count was unrolled
    4 ways by ptxas (8 copies of every dot)."""
    isolated = profiles["iso_w8_r128"]
    assert isolated["mma_warps"] == "[2, 4]"
    # (whole-kernel stack bytes vary by release: 0 with Triton 3.9, 40 outside the loop with 3.6)
    assert isolated["mma"] == 27 * 2 and isolated["loop_spills"] == 0


def test_stacked_moments_use_wgmma_and_fewer_layout_changes(profiles):
    """The four moments as two stacked products: the second (4 x 32 rows) is a Hopper warpgroup MMA,
    and the channel loop changes layouts (barriers) less often than the default's eight chained dots."""
    stacked, chained = profiles["stack_iso_w4_r168"], profiles["chained_w4_r168"]
    assert stacked["wgmma"] > 0 and chained["wgmma"] == 0
    assert stacked["loop_barriers"] < chained["loop_barriers"]
    assert stacked["image_warp_instructions"] < chained["image_warp_instructions"]
