"""The whole-step function (iqals_fast/step_graph.py): run eagerly it is the plain step (make_step with
torch.optim.SGD) bit for bit; captured as a CUDA graph it is the eager function (CUDA only)."""

import json
from dataclasses import replace

import pytest
import torch

from iqals_fast import step_graph
from iqals_fast.data.sources import synthetic
from iqals_fast.distributed import World
from iqals_fast.model import PaperCNN
from iqals_fast.ops import dispatch
from iqals_fast.step_graph import optimizer_step, sgd_groups, whole_step
from iqals_fast.train import TrainConfig, make_forward, make_optimizer, make_step, train

DS = synthetic(300, 60)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


def batches(device, sizes=(50, 50, 50, 20), seed=0):
    """Training-like batches: real-looking uint8 images, labels and soft-label targets; the last one partial."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(DS.train_x), torch.from_numpy(DS.train_y)
    out, i = [], 0
    for b in sizes:
        out.append((x[i:i + b].to(device), y[i:i + b].to(device), (0.5 + 0.5 * torch.rand(b, generator=g)).to(device)))
        i += b
    return out


def model_and_opt(device, channels_last=False, lr=0.1, wd=0.05):
    """The real PaperCNN; a weight decay larger than the paper's 0.004 so that its term shows in 4 steps."""
    model = PaperCNN(seed=3)
    model = (model.to(memory_format=torch.channels_last) if channels_last else model).to(device)
    return model, make_optimizer(model, lr, wd)


def run_steps(step, opt, data, lrs):
    """Train on ``data``, the learning rate set before each step as train() sets it (the param groups)."""
    out = []
    for (x, y, t), lr in zip(data, lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        loss, correct = step(x, y, t)
        out.append((loss.clone(), correct.clone()))
    return out


LRS = (0.1, 0.1, 0.01, 0.001)  # the staircase changes the rate twice, once on the partial batch


@pytest.mark.parametrize("channels_last,precision", [(False, "fp32"), (True, "fp32"), (True, "bf16")],
                         ids=["nchw", "channels_last", "channels_last-bf16"])
def test_whole_step_run_eagerly_is_the_plain_sgd_step_bit_for_bit(channels_last, precision):
    """make_step with torch.optim.SGD (zero_grad, backward, opt.step) vs the whole-step function eagerly: the
    same gradients (autograd.grad over the same graph) and the fused SGD kernel, which computes
    d = g + wd * p and p - lr * d with the same single roundings (fused multiply-adds) as SGD's
    ``grad.add(p, alpha=wd)`` and ``p.add_(d, alpha=-lr)``: equal bit for bit, so tolerance 0."""
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", CPU)
    data = batches(CPU)
    plain_m, plain_o = model_and_opt(CPU, channels_last)
    whole_m, whole_o = model_and_opt(CPU, channels_last)
    cfg = TrainConfig(compile=False, channels_last=channels_last, precision=precision)
    plain = make_step(plain_m, plain_o, loss_fn, replace(cfg, graph=False), CPU, World())
    whole = make_step(whole_m, whole_o, loss_fn, replace(cfg, graph=True), CPU, World())
    a, b = run_steps(plain, plain_o, data, LRS), run_steps(whole, whole_o, data, LRS)
    for (la, ca), (lb, cb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ca, cb)
    moved = 0.0
    for (name, p), q, p0 in zip(plain_m.named_parameters(), whole_m.parameters(), model_and_opt(CPU)[0].parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
        moved = max(moved, float((p - p0).detach().abs().max()))
    assert moved > 1e-3  # the steps did train
    assert whole_o.state_dict() == plain_o.state_dict()  # the checkpointed optimizer state is unchanged in form


def test_the_weight_decay_and_the_learning_rate_tensor_are_applied():
    """One step by hand: p - lr * (g + wd * p) for the decayed fc weights, p - lr * g elsewhere, with the lr tensor
    read at the step (written between steps, no new function)."""
    model, opt = model_and_opt(CPU)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", CPU)
    forward = make_forward(model, loss_fn, TrainConfig(channels_last=False), CPU)
    (x, y, t), = batches(CPU, (50,))
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = forward(x, y, t)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    lr = torch.tensor(1.0)
    step = whole_step(forward, sgd_groups(opt), lr, CPU, capture=False)
    lr.fill_(0.25)
    step(x, y, t)
    decayed = {id(p) for p in model.decayed_parameters()}
    for p, p0, g in zip(model.parameters(), before, grads):
        wd = 0.05 if id(p) in decayed else 0.0
        torch.testing.assert_close(p.detach(), p0 - 0.25 * (g + wd * p0), rtol=1e-6, atol=1e-7)  # the ops' rounding


def test_train_with_the_whole_step_equals_train_with_opt_step_and_resumes(tmp_path):
    """train() through make_step: --graph (on CPU: the whole-step function eagerly) vs the eager opt.step(), with
    the lr staircase (a step every epoch), a partial last batch (200 = 3 x 60 + 20) and an interrupted,
    resumed run: the same weights, losses and optimizer state, bit for bit."""
    def cfg(name, **kw):
        return TrainConfig(strategy=9, data="synthetic", epochs=3, train_subset=200, seed=1, batch_size=60,
                           lr_step_epochs=1, out=str(tmp_path / name), **kw)

    plain = train(cfg("plain", graph=False), dataset=DS, progress=False)
    whole = train(cfg("whole", graph=True), dataset=DS, progress=False, stop_after=2)
    train(cfg("whole", graph=True), dataset=DS, progress=False, resume=True)
    a = torch.load(plain / "checkpoint.pt", weights_only=True)
    b = torch.load(whole / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0, msg=k)
    assert b["optimizer"] == a["optimizer"]
    assert [r["lr"] for r in b["history"]] == pytest.approx([0.1, 0.01, 0.001])  # the staircase, every epoch
    assert [r["loss"] for r in b["history"]] == [r["loss"] for r in a["history"]]
    assert json.loads((whole / "config.json").read_text())["graph"] is True


@pytest.mark.slow
def test_compiled_forward_inside_the_whole_step_matches_the_eager_one():
    """--graph --compile: inductor's forward inside the whole step (on CPU eagerly) changes float rounding only.
    Tolerance: 4 steps of fp32 with fused kernels of another summation order (~1e-6 relative per step)."""
    torch._dynamo.reset()
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", CPU)
    data = batches(CPU, (50, 50, 50))
    em, eo = model_and_opt(CPU, True)
    cm, co = model_and_opt(CPU, True)
    eager = make_step(em, eo, loss_fn, TrainConfig(compile=False, graph=True, precision="fp32"), CPU, World())
    comp = make_step(cm, co, loss_fn, TrainConfig(compile=True, graph=True, precision="fp32"), CPU, World())
    a, b = run_steps(eager, eo, data, LRS), run_steps(comp, co, data, LRS)
    for (la, _), (lb, _) in zip(a, b):
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(em.named_parameters(), cm.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    torch._dynamo.reset()


def test_what_the_whole_step_refuses():
    model, opt = model_and_opt(CPU)
    fwd = make_forward(model, None, TrainConfig(), CPU)
    with pytest.raises(ValueError, match="capture=True needs a CUDA device"):
        whole_step(fwd, sgd_groups(opt), torch.tensor(0.1), CPU, capture=True)
    with pytest.raises(ValueError, match="lr must be a float32 scalar tensor"):
        whole_step(fwd, sgd_groups(opt), 0.1, CPU, capture=False)
    with pytest.raises(ValueError, match="momentum"):
        sgd_groups(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(TypeError, match="reproduces torch.optim.SGD"):
        sgd_groups(torch.optim.Adam(model.parameters()))
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(ValueError, match="one learning rate"):
        optimizer_step(fwd, opt, CPU, capture=False)
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        step_graph.graph_enabled(TrainConfig(graph=True), torch.device("cuda"), world_size=2)
    assert step_graph.graph_enabled(TrainConfig(), torch.device("cuda")) is True
    assert step_graph.graph_enabled(TrainConfig(), torch.device("cuda"), world_size=2) is False
    assert step_graph.graph_enabled(TrainConfig(), CPU) is False
    assert TrainConfig().speed(torch.device("cuda")) == (False, False)  # graphed, the eager forward inside
    assert TrainConfig(graph=False).speed(torch.device("cuda"))[0] is True  # reduce-overhead without the graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager_forward", "compiled_forward"])
def test_captured_replay_equals_the_eager_function_on_cuda(compiled):
    """The graph replayed vs the same function run eagerly, on CUDA: one capture for the full batches, the
    partial batch eager, the lr staircase through the tensor, no host synchronisation in the replayed steps.
    Tolerance, not equality: CUDA's max-pool backward and some cuDNN/cuBLAS kernels accumulate with atomics,
    in an order that differs from run to run (~1e-6 relative per step in fp32)."""
    dev = torch.device("cuda")
    torch._dynamo.reset()
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", dev)
    data = batches(dev)
    (em, eo), (gm, go) = model_and_opt(dev), model_and_opt(dev)

    def build(model, opt, capture):
        fwd = make_forward(model, loss_fn, TrainConfig(channels_last=False, precision="fp32"), dev)
        lr = torch.tensor(LRS[0], device=dev)
        step = whole_step(torch.compile(fwd, dynamic=False) if compiled else fwd, sgd_groups(opt), lr, dev,
                          capture=capture)
        return step, lr

    (eager, elr), (graphed, glr) = build(em, eo, False), build(gm, go, True)
    a = [eager(*b) for b in data[:1]]
    b = [graphed(*data[0])]  # the capture (and its warm-up, which trains nothing) happen here
    first = graphed.graph
    assert first is not None
    torch.cuda.synchronize()
    for batch, lr in zip(data[1:], LRS[1:]):
        elr.fill_(lr)
        glr.fill_(lr)
        a.append(eager(*batch))
        # a host synchronisation in a replayed step (or the eager partial one) raises; not where the compiler
        # first meets the partial batch's shape (it compiles for it there, once)
        checked = not (compiled and len(batch[1]) != len(data[0][1]))
        torch.cuda.set_sync_debug_mode("error" if checked else "default")
        try:
            b.append(graphed(*batch))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert graphed.graph is first  # captured once: the lr changes and the partial batch did not recapture
    for (la, ca), (lb, cb) in zip(a, b):
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
        assert abs(int(ca) - int(cb)) <= 1  # an argmax tie may flip under the atomics' rounding
    for (name, p), q in zip(em.named_parameters(), gm.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    moved = max(float((p - p0).detach().abs().max()) for p, p0 in zip(gm.parameters(), model_and_opt(dev)[0].parameters()))
    assert moved > 1e-3
    torch._dynamo.reset()


def test_a_gradient_laid_out_unlike_its_parameter_is_applied_to_the_right_elements():
    """torch's fused SGD reads a gradient's raw memory in its parameter's layout: a transposed gradient
    (what autograd returns for a weight used as ``w.transpose``) would update the wrong elements. The
    whole step must match torch.optim.SGD exactly on such a weight."""
    torch.manual_seed(0)
    w0 = torch.randn(4, 6, 3)

    def forward_for(w):
        def forward(x, labels, on_true):
            y = torch.bmm(x, w.transpose(1, 2))  # K x N x out from K x N x in: grad of w comes out transposed
            return (y * on_true).square().mean(), torch.zeros((), dtype=torch.int64)
        return forward

    x, on_true = torch.randn(4, 5, 3), torch.randn(4, 5, 6)
    w = torch.nn.Parameter(w0.clone())
    g, = torch.autograd.grad(forward_for(w)(x, None, on_true)[0], [w])
    assert g.stride() != w.stride()  # the case under test really arises
    step = whole_step(forward_for(w), [([w], 0.01)], torch.tensor(0.1), torch.device("cpu"), capture=False)
    step(x, None, on_true)
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([ref], lr=0.1, weight_decay=0.01)
    forward_for(ref)(x, None, on_true)[0].backward()
    opt.step()
    assert torch.equal(w.detach(), ref.detach())
