"""The whole SGD training step as one function, and on CUDA as one CUDA graph captured once.

``whole_step`` returns ``step(x_u8, labels, on_true) -> (loss, number correct)`` doing forward (the
caller's ``forward``: standardise, CNN, Eq. 1 loss), backward and the SGD update with weight decay,
``d = g + wd * p; p -= lr * d``, which is what ``torch.optim.SGD`` without momentum computes. The
update is the fused SGD kernel (``torch.optim.sgd.sgd(..., fused=True)``, what ``SGD(fused=True)``
runs): one kernel per parameter group on CUDA, reading ``lr`` from a device tensor, so the staircase
changes the rate by writing the tensor, never by capturing again. Measured on CPU, its results equal
the default ``torch.optim.SGD``'s bit for bit (tests/test_step_graph.py); the gradients are those of
``loss.backward()`` (``torch.autograd.grad`` over the same graph), returned fresh every step rather
than accumulated into ``.grad``, so nothing has to be zeroed or set to None between replays.

With ``capture=True`` (CUDA) the first full batch is run three times on a side stream (compilers,
allocator and cuBLAS/cuDNN workspaces warm up there; the weights are put back afterwards, so the
warm-up trains nothing), then captured once with ``torch.cuda.graph``; every later batch of that shape
is copied into the graph's static input buffers and the graph replayed: no host synchronisation, the
loss and count returned as device tensors. A batch of another shape (an epoch's last, partial batch)
runs the same function eagerly, with the same weights and learning rate tensor: the same arithmetic as
the graph, without a second capture.

``optimizer_step`` wraps it for a ``torch.optim.SGD`` whose object stays what is checkpointed and
restored (runs.py): its param groups give the parameters and weight decays, their ``lr`` (set per
epoch by ``train``) is copied into the device tensor when it changes. SGD without momentum keeps no
per-parameter state, so its ``state_dict`` is the same whether ``step()`` ran or the fused update did.

With ``torch.compile`` the forward is compiled by inductor without its own CUDA graphs ("reduce-overhead"
cannot nest inside a manual capture) and captured inside this graph: the graph removes the launch
overhead, inductor's fusions remove kernels from it. Not under DistributedDataParallel: its gradient
all-reduce hooks run in ``backward()``, which ``torch.autograd.grad`` bypasses.

``training_step`` is the one place that picks between this graph and the plain ``opt.step()`` path for
``train`` and ``fleet``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.optim.sgd import sgd

WARMUP_STEPS = 3
"""Eager runs on a side stream before the capture (the CUDA graphs documentation asks for a few)."""

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def graph_enabled(cfg, device: torch.device, world_size: int = 1) -> bool:
    """Whether ``train`` runs the whole-step function for ``cfg`` (``cfg.graph``; None: on for CUDA in a
    single process). On CPU, ``--graph`` runs the same function eagerly (there are no CUDA graphs)."""
    if cfg.graph and world_size > 1:
        raise ValueError(f"--graph: the whole-step graph cannot run under DistributedDataParallel ({world_size} "
                         "processes): its gradients bypass DDP's all-reduce; use --no-graph")
    if cfg.graph is None:
        return torch.device(device).type == "cuda" and world_size == 1
    return cfg.graph


def sgd_groups(opt: torch.optim.Optimizer) -> list[tuple[list[torch.Tensor], float]]:
    """``(parameters, weight decay)`` of each param group of ``opt``, a ``torch.optim.SGD`` whose update the
    fused function reproduces: no momentum, no Nesterov, not maximising, one learning rate for all groups."""
    if not isinstance(opt, torch.optim.SGD):
        raise TypeError(f"the whole-step update reproduces torch.optim.SGD, got {type(opt).__name__}")
    for g in opt.param_groups:
        if g["momentum"] or g["nesterov"] or g["maximize"]:
            raise ValueError("the whole-step update is SGD without momentum, Nesterov or maximize; the optimizer "
                             f"has momentum={g['momentum']}, nesterov={g['nesterov']}, maximize={g['maximize']}")
    _group_lr(opt)
    return [(list(g["params"]), float(g["weight_decay"])) for g in opt.param_groups]


def _group_lr(opt: torch.optim.Optimizer) -> float:
    rates = {float(g["lr"]) for g in opt.param_groups}
    if len(rates) != 1:
        raise ValueError(f"the whole-step update takes one learning rate for all param groups, got {sorted(rates)}")
    return rates.pop()


def whole_step(forward: Callable, params_and_decay: Iterable[tuple[Sequence[torch.Tensor], float]],
               lr: torch.Tensor, device: torch.device, *, capture: bool) -> Step:
    """``step(x_u8, labels, on_true) -> (loss, correct)``: ``forward`` (train.make_forward's contract), the
    gradients of the loss for every parameter, and ``p -= lr * (g + wd * p)`` for each ``(parameters,
    weight decay)`` group; ``lr`` a float32 scalar tensor on ``device``, read at every step. ``capture``:
    captured as one CUDA graph at the first call and replayed (module docstring); else run eagerly."""
    device = torch.device(device)
    groups = [(list(ps), float(wd)) for ps, wd in params_and_decay]
    params = [p for ps, _ in groups for p in ps]
    if not params:
        raise ValueError("params_and_decay: no parameters to train")
    bad = [tuple(p.shape) for p in params if not p.requires_grad or p.device.type != device.type]
    if bad:
        raise ValueError(f"params_and_decay: parameters of shapes {bad} do not require grad or are not on {device}")
    if not (isinstance(lr, torch.Tensor) and lr.ndim == 0 and lr.dtype == torch.float32
            and lr.device.type == device.type):
        raise ValueError(f"lr must be a float32 scalar tensor on {device}, got {lr!r}")
    if capture and device.type != "cuda":
        raise ValueError(f"capture=True needs a CUDA device, got {device}: run the same step with capture=False")

    def run(x_u8, labels, on_true):
        with _no_autocast_cache():  # casts cached across a capture would outlive it (CUDA graphs + autocast)
            loss, correct = forward(x_u8, labels, on_true)
            grads = [g if g.stride() == q.stride() else torch.empty_like(q).copy_(g)  # fused SGD reads
                     for g, q in zip(torch.autograd.grad(loss, params), params)]  # raw memory: match layouts
        with torch.no_grad():
            i = 0
            for ps, wd in groups:
                sgd(ps, list(grads[i:i + len(ps)]), [None] * len(ps), fused=True, weight_decay=wd, momentum=0.0,
                    lr=lr, dampening=0.0, nesterov=False, maximize=False)
                i += len(ps)
        return loss.detach(), correct

    if not capture:
        return run
    return _Graphed(run, params, device)


class _Graphed:
    """``run`` captured once as a CUDA graph for the shape of the first batch it sees, then replayed."""

    def __init__(self, run: Step, params: list[torch.Tensor], device: torch.device):
        self.run, self.params, self.device = run, params, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x_u8, labels, on_true):
        batch = (x_u8, labels, on_true)
        if self.graph is None:
            self._capture(batch)
        if any(a.shape != s.shape or a.dtype != s.dtype for a, s in zip(batch, self.inputs)):
            return self.run(*batch)  # the last, partial batch: the same function, eagerly
        for s, a in zip(self.inputs, batch):
            s.copy_(a)
        self.graph.replay()
        loss, correct = self.outputs
        return loss.clone(), correct.clone()  # the static outputs are overwritten by the next replay

    def _capture(self, batch) -> None:
        dev = self.device
        self.inputs = tuple(a.detach().clone() for a in batch)  # the static input buffers
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.params]
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.run(*self.inputs)
        torch.cuda.current_stream(dev).wait_stream(side)
        with torch.no_grad():  # the warm-up steps changed the weights: put them back, bit for bit
            for p, k in zip(self.params, kept):
                p.copy_(k)
        del kept
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.run(*self.inputs)
        self.graph = graph


def optimizer_step(forward: Callable, opt: torch.optim.Optimizer, device: torch.device, *, capture: bool) -> Step:
    """``whole_step`` over ``opt``'s param groups (``sgd_groups``) with its learning rate: the groups' ``lr`` is
    copied into the device tensor whenever it changes (a host-side comparison, no synchronisation)."""
    device = torch.device(device)
    current = _group_lr(opt)
    lr = torch.tensor(current, dtype=torch.float32, device=device)
    inner = whole_step(forward, sgd_groups(opt), lr, device, capture=capture)

    def step(x_u8, labels, on_true):
        nonlocal current
        rate = _group_lr(opt)
        if rate != current:
            lr.fill_(rate)
            current = rate
        return inner(x_u8, labels, on_true)

    return step


def training_step(forward: Callable, opt: torch.optim.Optimizer, cfg, device: torch.device, world_size: int = 1) -> Step:
    """One SGD step over ``forward(x_u8, labels, on_true) -> (loss, stats)``: ``step(...) -> (loss, stats)``,
    both detached, by the path ``cfg`` asks for on ``device``. With the whole-step graph (``graph_enabled``)
    ``optimizer_step``, the forward compiled inside it by inductor without its own CUDA graphs (they cannot nest
    in the manual capture); otherwise ``opt.step()`` after ``loss.backward()``, the forward compiled as
    ``cfg.speed`` says, on CUDA replayed as a CUDA graph ("reduce-overhead", since a batch of 100 is
    launch-bound). ``train.make_step`` and ``fleet.make_fleet_step`` both build their step here."""
    device = torch.device(device)
    compiled = cfg.speed(device)[0]
    if graph_enabled(cfg, device, world_size):
        if compiled:
            forward = torch.compile(forward, dynamic=False)
        return optimizer_step(forward, opt, device, capture=device.type == "cuda")
    cudagraphs = compiled and device.type == "cuda"
    if compiled:
        forward = torch.compile(forward, mode="reduce-overhead" if cudagraphs else None, dynamic=False)

    def step(x_u8, labels, on_true):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, stats = forward(x_u8, labels, on_true)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach().clone(), stats.clone()

    return step


@contextlib.contextmanager
def _no_autocast_cache():
    was = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(was)
