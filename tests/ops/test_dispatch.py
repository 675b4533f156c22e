"""The dispatch table (iqals_fast/ops/dispatch.py) and the package's layering: every operation has a torch
reference, the table names each implementation directly, auto's preferences, the errors, and no import
cycle or upward import anywhere in the package."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import iqals_fast as iq
from iqals_fast.ops import cpu, dali, dispatch, reference, triton

from . import interpreter

PACKAGE = Path(iq.__file__).resolve().parent
ROOT = PACKAGE.parent

LAYERS = [
    {"config", "_io", "_alloc", "_C", "kernels", "ops"},
    {"data"},
    {"model", "inference", "train", "step_graph", "fleet", "runs", "distributed", "metrics"},
    {"evaluate"},
    {"report", "bench", "throughput"},
    {"reproduce"},
    {"cli", "__main__"},
]
"""The package's layers, lowest first: a module imports only from its own layer or lower ones (the
package's __init__, the public API, sits with ops)."""


# ---------------------------------------------------------------------------------------------
# The table


def test_the_cpu_extension_is_built():
    """CI builds the extension: without it the cpu backend's tests would only be skipped."""
    from iqals_fast import _C

    assert cpu.available() and _C.isas()


def test_every_op_has_a_torch_reference_last():
    assert set(dispatch.OPS) == {"distort_and_score", "ssim", "jpeg", "soft_label_mse", "lrn"}
    for op, backends in dispatch.TABLE.items():
        assert list(backends)[-1] == "torch", op
        assert backends["torch"].fn is getattr(reference, op), op
        assert set(backends) <= set(dispatch.BACKENDS), op


def test_the_table_names_each_implementation_directly():
    """Go to definition from the table reaches the implementation: the backend modules' own functions,
    named after the operation, and their own availability and device tests."""
    modules = {"cpu": cpu, "triton": triton, "torch": reference, "dali": dali, "dali_gpu": dali}
    for op, backends in dispatch.TABLE.items():
        for name, impl in backends.items():
            mod = modules[name]
            assert impl.fn.__module__ == mod.__name__, (op, name)
            if name == "dali":
                assert impl.fn is dali.jpeg_cpu and impl.supports is dali.supports
            elif name == "dali_gpu":
                assert impl.fn is dali.jpeg_gpu and impl.supports is dali.supports_gpu and not impl.auto
            elif name != "torch":
                assert impl.fn is getattr(mod, op) and impl.available is mod.available and impl.supports is mod.supports


def test_backends_and_auto_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu_dev = torch.device("cpu")
    assert "cpu" in iq.backends("distort_and_score") and "cpu" in iq.backends("ssim")
    for op in ("distort_and_score", "ssim", "lrn"):
        assert dispatch.resolve(op, "auto", cpu_dev)[0] == "cpu"
    assert dispatch.resolve("soft_label_mse", "auto", cpu_dev)[0] == "torch"
    assert dispatch.PREFERENCE == ("triton", "dali", "cpu", "torch")


@pytest.mark.skipif(not interpreter.HAVE_TRITON, reason="triton is not installed")
def test_auto_prefers_triton_where_it_runs(device, monkeypatch):
    if device.type == "cpu":
        if interpreter.SUBPROCESS or not triton.interpreted():
            pytest.skip("the Triton kernels are not interpreted in this process")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    for op in ("distort_and_score", "ssim", "soft_label_mse"):
        assert dispatch.resolve(op, "auto", device)[0] == "triton"


def test_the_public_api_keeps_the_input_type(gen):
    x = gen(4, 16, 16)
    for backend in iq.backends("distort_and_score"):
        if not dispatch.TABLE["distort_and_score"][backend].supports(torch.device("cpu")):
            continue
        out, s = iq.distort_and_score(x, "blur+noise", 1, seed=5, backend=backend)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and s.dtype == np.float32
        assert isinstance(iq.distort(torch.from_numpy(x), "noise", 1, backend=backend), torch.Tensor)


def test_resolve_names_what_is_wrong(monkeypatch):
    cpu_dev = torch.device("cpu")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        dispatch.resolve("ssim", "cuda", cpu_dev)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        dispatch.resolve("ssim", None, cpu_dev)
    with pytest.raises(ValueError, match="unknown operation 'blur'"):
        dispatch.resolve("blur", "auto", cpu_dev)
    with pytest.raises(ValueError, match="backend 'cpu' is not available for 'soft_label_mse'"):
        dispatch.resolve("soft_label_mse", "cpu", cpu_dev)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if triton.available():
        with pytest.raises(ValueError, match="backend 'triton' cannot run 'ssim' on cpu tensors"):
            dispatch.resolve("ssim", "triton", cpu_dev)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'cpu' cannot run 'ssim' on meta tensors"):
            dispatch.resolve("ssim", "cpu", torch.device("meta"))


def test_public_names():
    assert set(iq.__all__) >= {"IQA_MEASURES", "LEVELS", "STRATEGIES", "Levels", "Protocol", "Strategy", "backends",
                               "distort", "distort_and_score", "iqa_measure", "iqa_quality", "soft_label_mse",
                               "soft_labels", "ssim"}
    assert iq.backends is dispatch.backends


@pytest.mark.skipif(not interpreter.SUBPROCESS, reason="this process runs the interpreter tests itself")
def test_triton_in_fresh_interpreter_process():
    """The Triton tests of tests/ops and tests/kernels in a new process started with TRITON_INTERPRET=1
    (triton was imported without the interpreter before they were collected here)."""
    cmd, env = interpreter.fresh_process_args([str(ROOT / "tests" / "ops"), str(ROOT / "tests" / "kernels")])
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Layering: no cycles, nothing imports upward


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    p = PACKAGE.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file() or name == "iqals_fast._C"


def _imports() -> dict[str, set[str]]:
    """{module: modules of the package it imports, anywhere in its code (lazy imports included)}."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "iqals_fast"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != "iqals_fast":
                    continue
                subs = [f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")]
                targets |= set(subs) if subs and len(subs) == len(node.names) else {mod} | set(subs)
        graph[name] = {t for t in targets if t != name}
    return graph


def _layer(module: str) -> int:
    if module == "iqals_fast":
        return 0
    top = module.split(".")[1]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in the layer table of tests/ops/test_dispatch.py; add it where it belongs")


def test_no_module_imports_a_layer_above_it():
    graph = _imports()
    bad = [f"{m} -> {t}" for m, ts in sorted(graph.items()) for t in sorted(ts) if _layer(t) > _layer(m)]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)
    ops = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
           if m.startswith(("iqals_fast.ops", "iqals_fast.kernels")) and t.startswith("iqals_fast.data")]
    assert not ops, f"ops imports data: {ops}"
    data = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
            if m.startswith("iqals_fast.data") and t.startswith("iqals_fast.evaluate")]
    assert not data, f"data imports the evaluation: {data}"


def test_no_import_cycles():
    graph = _imports()
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:  # depth-first search; a node met again while on the stack closes a cycle
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if seen.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in seen:
                visit(t)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)


def test_backends_do_not_import_the_dispatcher_nor_register_themselves():
    graph = _imports()
    for m in ("cpu", "triton", "dali", "reference", "noise", "checks"):
        assert "iqals_fast.ops.dispatch" not in graph[f"iqals_fast.ops.{m}"], m
    assert not hasattr(dispatch, "register")  # the table is static: nothing registers into it
    for m in graph:
        if m.startswith("iqals_fast.kernels"):
            assert graph[m] == set(), f"{m} imports {graph[m]}: kernels take their constants as arguments"


def test_kernels_live_in_the_package():
    assert not (ROOT / "kernels").exists() and (PACKAGE / "kernels" / "distort_and_score.py").is_file()
    assert not (PACKAGE / "data" / "dali.py").exists()
    import iqals_fast.kernels

    assert Path(iqals_fast.kernels.__file__).resolve().parent == PACKAGE / "kernels"
