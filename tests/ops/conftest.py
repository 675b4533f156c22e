"""The one ``backend`` fixture of the operation tests: every backend the dispatch table lists for the
module's operation (``OP = "..."`` in the module, or ``@pytest.mark.op("...")`` on a test), each
skipped with its reason where it cannot run here: not installed (the C++ extension, triton, DALI),
or not on this device (``--device``; the Triton kernels run on CPU tensors in the interpreter, see
interpreter.py). ``@pytest.mark.against_reference``: the backends but the torch reference itself
(the test compares them with it); ``@pytest.mark.backends("a", ...)``: only those;
``@pytest.mark.backends(exclude=("a", ...))``: all but those."""

from __future__ import annotations

import pytest

from iqals_fast.ops import dispatch

from . import interpreter


def pytest_configure(config):
    config.addinivalue_line("markers", "op(name): the dispatch operation whose backends the test runs over")
    config.addinivalue_line("markers", "against_reference: run over the backends but the torch reference")
    config.addinivalue_line("markers", "backends(*names, exclude=()): run over these backends of the operation only")


def _op(node, module) -> str:
    marker = node.get_closest_marker("op")
    return marker.args[0] if marker is not None else module.OP


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        node = metafunc.definition
        names = list(dispatch.TABLE[_op(node, metafunc.module)])
        if node.get_closest_marker("against_reference"):
            names.remove("torch")
        if (only := node.get_closest_marker("backends")) is not None:
            names = [b for b in names if (b in only.args or not only.args) and b not in only.kwargs.get("exclude", ())]
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request, device, monkeypatch) -> str:
    """A backend name of the test's operation that runs on ``device`` here (else the test is skipped)."""
    op, name = _op(request.node, request.module), request.param
    impl = dispatch.TABLE[op][name]
    if not impl.available():
        pytest.skip(f"backend {name!r} is not installed here")
    if name == "triton" and device.type == "cpu":
        if interpreter.SUBPROCESS:
            pytest.skip("triton was imported without the interpreter before these tests: run in a subprocess")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not impl.supports(device):
        why = " (the kernels were compiled for a GPU in this process; use --device cuda)" if name == "triton" else ""
        pytest.skip(f"backend {name!r} cannot run {op!r} on {device}{why}")
    return name


@pytest.fixture
def impl(backend, request, device):
    """The backend's implementation of the test's operation (the dispatch table's signature)."""
    return dispatch.resolve(_op(request.node, request.module), backend, device)[1]
