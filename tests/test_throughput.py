"""``iqals-fast bench`` (iqals_fast/throughput.py): which rows it times, how it names and compares them."""

import json

import pytest
import torch

from iqals_fast.cli import main
from iqals_fast.throughput import default, table, today, variants

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def names(device, fleets=()):
    return [v.name(device) for v in variants(device, fleets)]


def test_the_cpu_rows_baseline_today_and_the_new_default_side_by_side():
    rows = names(CPU)
    assert rows[0] == "eager, plain PyTorch, fp32"  # the baseline: forward_reference, eager, NCHW
    assert today(CPU).name(CPU) == "eager, dispatched LRN, channels_last, fp32"
    assert default(CPU).name(CPU) in rows and today(CPU).name(CPU) in rows
    assert {"eager, dispatched LRN, channels_last, bf16", "compiled, dispatched LRN, channels_last, bf16",
            "whole-step function, eager forward, dispatched LRN, channels_last, fp32"} <= set(rows)
    assert len(rows) == len(set(rows))  # rows that resolve to the same settings are timed once


def test_the_cuda_rows_whole_step_graph_compiled_and_fleets_in_both_precisions():
    """Named from the settings each row resolves to on CUDA (no GPU needed to resolve them)."""
    rows = names(CUDA, (1, 9, 18))
    assert today(CUDA).name(CUDA) == "compiled, dispatched LRN, fp32"  # reduce-overhead, before the graph
    assert default(CUDA).name(CUDA) == "whole-step graph, eager forward, dispatched LRN, fp32"
    for p in ("fp32", "bf16"):
        assert {f"whole-step graph, eager forward, dispatched LRN, {p}", f"compiled, dispatched LRN, {p}",
                f"whole-step graph, compiled forward, dispatched LRN, {p}", f"eager, dispatched LRN, {p}"} <= set(rows)
        for k in (1, 9, 18):
            assert f"fleet of {k}: whole-step graph, eager forward, dispatched LRN, {p}" in rows
            assert f"fleet of {k}: whole-step graph, compiled forward, dispatched LRN, {p}" in rows
    assert len(rows) == len(set(rows))
    groups = {v.name(CUDA): v.group(CUDA) for v in variants(CUDA, (18,))}
    assert groups["compiled, dispatched LRN, fp32"] == "compiled"
    assert groups["fleet of 18: whole-step graph, eager forward, dispatched LRN, bf16"] == "fleet"
    assert groups["whole-step graph, eager forward, dispatched LRN, bf16"] == "single"


def test_the_table_gives_ratios_to_the_baseline_and_todays_default_and_names_failures():
    res = {"device": "X", "threads": 2, "data": "d", "batch": 100, "baseline": "a", "today": "b", "default": "c",
           "model_only": {"a": {"images_per_s": 400.0, "warmup_s": 1.0}, "b": {"images_per_s": 900.0, "warmup_s": 1.0},
                          "c": {"images_per_s": 1800.0, "warmup_s": 1.0}, "d": {"error": "RuntimeError: boom"}},
           "pipeline": [{"n": 50000, "epochs": 3, "runs": 9, "row": "c", "images_per_s": 1620.0,
                         "data_seconds_per_epoch": 0.1, "first_epoch_seconds": 2.0, "first_epoch_data_seconds": 1.0}]}
    md = table(res)
    assert "| model only, c **(train's default)** | 1,800 | 4.50x | 2.00x |" in md
    assert "| model only, d | failed: RuntimeError: boom | | |" in md
    assert "| full strategy-9 pipeline, fleet of 9 (50,000 images, epochs 2-3, c) | 1,620 | 4.05x | 1.80x |" in md
    assert "Pipeline (9 runs): 0.90x of its model-only row" in md


@pytest.mark.slow
def test_bench_command_reports_every_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", "synthetic", "-n", "200", "--epochs", "2", "--steps", "1", "--rounds", "1",
                 "--fleet", "2", "--pipeline-fleet", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["model_only"]) == set(names(CPU, (2,)))
    assert res["default"] == default(CPU).name(CPU) and res["today"] == today(CPU).name(CPU)
    assert all(r["images_per_s"] > 0 for r in res["model_only"].values())  # no row failed
    assert res["model_only"]["fleet of 2: eager, dispatched LRN, channels_last, fp32"]["images_per_step"] == 200
    assert [p["runs"] for p in res["pipeline"]] == [1, 2] and all(p["n"] == 200 for p in res["pipeline"])
    assert len(res["pipeline"][0]["epochs_images_per_s"]) == 2
    printed = capsys.readouterr().out
    assert "full strategy-9 pipeline, fleet of 2" in printed and printed == out.with_suffix(".md").read_text()
