"""Benchmark fixtures: the real CIFAR-10 test images every contender gets (skipped without the archive).

Run the benchmarks with ``pytest bench -o addopts="" --benchmark-only`` (the project's addopts skip
benchmarks, and `pytest` alone collects tests/ only).
"""

from __future__ import annotations

import pytest
from compare_cpu import ARCHIVE, load_images, prepare

N_IMAGES = 2000


@pytest.fixture(scope="session")
def bench_data() -> dict:
    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 archive not found at {ARCHIVE} (set IQALS_CIFAR_JPEG)")
    return prepare(load_images(N_IMAGES))
