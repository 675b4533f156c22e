"""The GPU scripts of bench/ (no GPU here): their shell syntax, and the Python entry points they call with the
arguments they pass. The whole CPU dry run (`bash bench/gpu_check.sh --device cpu`, ~5 minutes) is not a test."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iqals_fast.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_the_scripts_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    r = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_gpu_check_runs_every_step_in_priority_order():
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    order = ["step graph_test", "bench train_model", "bench pipeline", "bench compiled", "step kernels",
             "step medium ", "step medium_eval"]
    at = [text.index(s) for s in order]
    assert at == sorted(at)


@pytest.mark.parametrize("argv", [
    # the CPU dry run's and the GPU run's calls in bench/gpu_check.sh (the flags; the values are the dry run's)
    ["bench", "--device", "cpu", "--data", "synthetic", "--steps", "1", "--rounds", "1", "--warmup", "1",
     "--groups", "single", "fleet", "--fleet", "2", "--no-pipeline", "--out", "x.json"],
    ["bench", "--groups", "-n", "100", "--epochs", "3", "--pipeline-fleet", "2"],
    ["bench", "--groups", "compiled", "--no-pipeline", "--fleet", "--rows", "compiled, dispatched LRN, channels_last, bf16"],
    ["bench", "--groups", "compiled", "--no-pipeline", "--fleet", "18"],
    ["train", "--strategy", "1", "9", "--seed", "0", "--epochs", "2", "--lr-step-epochs", "1", "--curve-every", "1",
     "--train-subset", "100", "--data", "synthetic", "--device", "cpu", "--out", "m", "--no-progress", "--resume"],
    ["eval", "m/strategy1-seed0", "--device", "cpu", "--no-progress", "--test-subset", "100", "--suite", "table2"],
])
def test_the_command_lines_of_gpu_check_parse(argv):
    args = build_parser().parse_args(argv)  # an unknown flag or value exits (SystemExit fails the test)
    assert args.command == argv[0]


def test_the_bench_command_with_the_baseline_alone(tmp_path, monkeypatch, capsys):
    """--groups alone times the baseline only (what the pipeline step of gpu_check.sh asks, here without it)."""
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "b.json"
    assert main(["bench", "--data", "synthetic", "--steps", "1", "--rounds", "1", "--warmup", "1", "--groups",
                 "--no-pipeline", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["model_only"]) == [res["baseline"]] == ["eager, plain PyTorch, fp32"]
    assert res["model_only"][res["baseline"]]["images_per_s"] > 0
    assert capsys.readouterr().out == out.with_suffix(".md").read_text()


def test_gpu_bench_takes_the_dry_run_arguments(tmp_path, monkeypatch):
    """bench/gpu_bench.py's env step with the dry run's arguments (the Triton interpreter on CPU)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_bench

    assert gpu_bench.main(["--device", "cpu", "--steps", "env", "--n", "4", "--tiny", "--max-candidates", "1",
                           "--graph-steps", "50", "--quick", "--out", str(tmp_path)]) == 0
    (res,) = [json.loads(p.read_text()) for p in tmp_path.glob("gpu_bench_*.json")]
    assert res["env"]["interpreter"] is True and "torch" in res["env"]
    sys.modules.pop("gpu_bench", None)


def test_adoption_needs_the_same_bytes_and_scores():
    pytest.importorskip("triton")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from gpu_bench import adoption
    finally:
        sys.path.pop(0)
    table = {"triton": {"median_s": 1.0},
             "triton_a": {"median_s": 0.8, "bytes_max_diff_vs_default": 1, "ssim_max_abs_diff_vs_default": 0.0},
             "triton_b": {"median_s": 0.9, "bytes_max_diff_vs_default": 0, "ssim_max_abs_diff_vs_default": 1e-7},
             "triton_c": {"median_s": 0.85, "bytes_max_diff_vs_default": 0, "ssim_max_abs_diff_vs_default": 1e-3},
             "triton_d": {"median_s": 0.99, "bytes_max_diff_vs_default": 0, "ssim_max_abs_diff_vs_default": 0.0}}
    got = adoption(table, bytes_must_match=True)
    assert got["config"] == "b" and got["speedup_vs_default"] == pytest.approx(1 / 0.9)
    assert set(got["faster_but_different"]) == {"triton_a", "triton_c"}
    assert adoption({"triton": {"median_s": 1.0}, "triton_d": table["triton_d"]}, bytes_must_match=True)["config"] is None
