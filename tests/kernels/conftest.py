"""Fixtures of the kernel tests: the Triton kernels on this device (interpreted on CPU tensors, see
tests/ops/interpreter.py, which defines them in interpreter mode before any test runs)."""

from __future__ import annotations

import pytest
from ops import interpreter


@pytest.fixture
def triton_device(device, monkeypatch):
    """The device the Triton kernels run on here (CPU: the interpreter, turned on for the test)."""
    if not interpreter.HAVE_TRITON:
        pytest.skip("triton is not installed")
    from iqals_fast.ops import triton

    if device.type == "cpu":
        if interpreter.SUBPROCESS:
            pytest.skip("triton was imported without the interpreter before these tests: run in a subprocess")
        if not triton.interpreted():
            pytest.skip("the Triton kernels were compiled for a GPU in this process; run with --device cuda")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif device.type != "cuda":
        pytest.skip(f"no Triton kernels for {device}")
    return device
