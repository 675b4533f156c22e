"""Fixtures and collection for the pytest-benchmark benchmarks in bench/ops/ (bench_<op>.py).

    pytest bench -o addopts="" --benchmark-only                       # 2,000 images
    IQALS_BENCH_N=32 pytest bench -o addopts="" --benchmark-only      # a quick check that they run
    pytest bench -o addopts="" --benchmark-only --benchmark-json=bench/results/ops-<machine>.json

(The project's addopts skip benchmarks, and `pytest` alone collects tests/ only.) With
``--benchmark-json=X.json`` a Markdown summary (machine, then per group each contender's rate and
its ratio to iqals_fast's entry) is written beside it as X.md.

Images: ``IQALS_BENCH_N`` (default 2,000) test images of the shared CIFAR-10 archive, or generated
ones where it is absent (bench/contenders.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from contenders import images, machine, prepare

N_IMAGES = int(os.environ.get("IQALS_BENCH_N", "2000"))
BENCH = Path(__file__).resolve().parent


def pytest_collect_file(file_path: Path, parent):
    """bench_<op>.py files are test modules here (the project's python_files stays test_*.py)."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_") and BENCH in file_path.parents
            and not parent.session.isinitpath(file_path)):  # a path given on the command line is collected anyway
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items):
    for item in items:  # peers' deprecation and other notices are not ours to fix (pyproject makes warnings errors)
        if BENCH in Path(item.path).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore"))


@pytest.fixture(scope="session")
def bench_images() -> tuple:
    """(uint8 N x 32 x 32 x 3 images, what they are)."""
    return images(N_IMAGES)


@pytest.fixture(scope="session")
def bench_data(bench_images) -> dict:
    """bench/contenders.py's input: the images (numpy and torch), their JPEG (quality 8) copies, and
    what the images are ("source")."""
    return {**prepare(bench_images[0]), "source": bench_images[1]}


@pytest.fixture
def record(benchmark):
    """record(group, items, unit="images", ours=False, data=None): name the benchmark's group and what
    a call processes (``data``: which images, for the image benchmarks).

    ``ours`` marks iqals_fast's entry of the group, which the Markdown summary's ratios are taken against."""

    def set_info(group: str, items: int, unit: str = "images", ours: bool = False, data: str | None = None) -> None:
        benchmark.group = group
        benchmark.extra_info.update(items=items, unit=unit, ours=ours)
        if data:
            benchmark.extra_info["data"] = data

    return set_info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["iqals"] = machine()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Beside --benchmark-json=X.json, write X.md: per group, rate per second and ratio to iqals_fast's entry."""
    path = config.getoption("benchmark_json", None)
    if not path or not output_json.get("benchmarks"):
        return
    m = output_json["machine_info"].get("iqals") or machine()
    lines = ["# pytest-benchmark: iqals_fast against its peers", "",
             f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores; torch threads {m['torch_threads']}; "
             f"kernels: {m['kernels_isa']}. Load average at the end: {os.getloadavg()[0]:.2f}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
             f"When: {output_json.get('datetime', '')}. Command: `pytest bench -o addopts=\"\" --benchmark-only "
             f"--benchmark-json={Path(path).name}` (IQALS_BENCH_N={N_IMAGES}).",
             "Per second = items per call / median time per call; ratio = iqals_fast's rate / this rate.", ""]
    groups: dict[str, list] = {}
    for b in output_json["benchmarks"]:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    for group, rows in groups.items():
        info = rows[0]["extra_info"]
        ours = [r for r in rows if r["extra_info"].get("ours")]
        ours_rate = ours[0]["extra_info"]["items"] / ours[0]["stats"]["median"] if ours else None
        what = f"{info.get('items', '?')} {info.get('unit', 'items')} per call"
        what += f"; {info['data']}" if "data" in info else ""
        lines += [f"## {group}", "", what + ".", "",
                  "| benchmark | per s (median) | per s (best) | median ms | rounds | ratio |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            items, st = r["extra_info"].get("items", 1), r["stats"]
            rate = items / st["median"]
            ratio = "1" if r in ours else (f"{ours_rate / rate:.1f}x" if ours_rate else "")
            lines.append(f"| {r['name']} | {rate:,.0f} | {items / st['min']:,.0f} | {st['median'] * 1e3:.3f} | "
                         f"{st['rounds']} | {ratio} |")
        lines.append("")
    Path(path).with_suffix(".md").write_text("\n".join(lines))
