"""Triton's CPU interpreter for the tests: the kernels defined in interpreter mode, once per process.

Without a GPU the Triton kernels run in the interpreter on CPU tensors (slow: small batches). The
interpreter must be on when the kernels are *defined*, and Triton decides at its own import whether
its @jit library functions (tl.randn, ...) are interpreted. So this module, imported by the
conftests of tests/ops and tests/kernels before any test runs, turns TRITON_INTERPRET=1 on while it
imports triton and defines the kernels, and restores the variable afterwards; the ``backend``
fixture turns it on again around each Triton test only, so ``backend="auto"`` elsewhere is
unchanged. If something imported triton without the interpreter before (torch._dynamo does), the
Triton tests rerun in a fresh interpreter-mode process instead (``SUBPROCESS``; see
tests/ops/test_dispatch.py). With ``--device cuda`` the same tests run the compiled kernels.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = not torch.cuda.is_available()
"""No GPU: the kernels run in the Triton interpreter on CPU tensors."""


def _stdlib_interpreted() -> bool:
    import triton.language.random as tlr

    return type(tlr.randn).__name__ == "InterpretedFunction"


SUBPROCESS = HAVE_TRITON and INTERPRET and "triton" in sys.modules and not _stdlib_interpreted()
"""triton was imported without the interpreter before these tests: they run in a subprocess."""

if HAVE_TRITON and INTERPRET and not SUBPROCESS:
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from iqals_fast.ops import triton as _backend

        _backend.kernels()  # imports triton and defines the kernels, interpreted
    finally:
        if _saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _saved


def fresh_process_args(paths: list[str]) -> tuple[list[str], dict]:
    """(command, environment) that run the Triton tests of ``paths`` in a new interpreter-mode process."""
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", "--device", "cpu",
           "-k", "triton or kernels"]
    return cmd, {**os.environ, "TRITON_INTERPRET": "1"}
