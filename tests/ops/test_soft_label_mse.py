"""soft_labels (Eq. 2, plain torch, no dispatch) and soft_label_mse (Eq. 1): the reference against
independent computations, every backend against the reference's autograd, under torch.compile and in
CUDA graphs.

Correct means (docs/ops.md): the reference within 1e-5 of a float64 computation written out
independently (gradient 1e-4); a fast backend's loss within 1e-6 of the reference's and its gradient
within 2e-5 of the largest gradient (bfloat16 logits: 1e-2, its 8-bit mantissa).
"""

import numpy as np
import pytest
import torch

import iqals_fast as iq
from iqals_fast.ops import dispatch

from .helpers import check_loss, eager_loss, loss_case

OP = "soft_label_mse"


def test_soft_labels_eq2():
    q = iq.soft_labels(np.array([2, 0]), np.array([0.8, 1.0]), num_classes=5)
    assert isinstance(q, np.ndarray) and q.dtype == np.float32
    np.testing.assert_allclose(q[0], [0.05, 0.05, 0.8, 0.05, 0.05], atol=1e-7)
    np.testing.assert_allclose(q[1], [1, 0, 0, 0, 0])  # 0-1 labels: score 1
    np.testing.assert_allclose(q.sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("transform,expected", [("identity", 0.6), ("power:2", 0.36), ("affine:0.5", 0.8),
                                                ("affine:10", 0.1)])
def test_transforms(transform, expected):
    q = iq.soft_labels(torch.tensor([1]), torch.tensor([0.6]), num_classes=10, transform=transform)
    assert float(q[0, 1]) == pytest.approx(expected, abs=1e-6)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)


def _reference_loss(logits, labels, scores):
    """Eq. 1 written independently: one-hot mixing, softmax by exp/sum, in float64."""
    k = logits.shape[1]
    onehot = torch.nn.functional.one_hot(labels, k).double()
    s = scores.double()[:, None]
    q = onehot * s + (1 - onehot) * (1 - s) / (k - 1)
    e = torch.exp(logits.double() - logits.double().max(1, keepdim=True).values)
    p = e / e.sum(1, keepdim=True)
    return ((p - q) ** 2).sum(1).mean()


@pytest.mark.parametrize("b,k", [(1, 2), (7, 10), (100, 10), (33, 1000)])
def test_reference_loss_and_gradient_match_an_independent_computation(b, k):
    g = torch.Generator().manual_seed(b * k)
    z = (3 * torch.randn(b, k, generator=g)).requires_grad_()
    y = torch.randint(0, k, (b,), generator=g)
    s = torch.rand(b, generator=g)
    loss = iq.soft_label_mse(z, y, s, backend="torch")
    (gz,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    ref = _reference_loss(z64, y, s)
    (gref,) = torch.autograd.grad(ref, z64)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(gz.double(), gref, rtol=1e-4, atol=1e-7)


def test_reference_loss_gradcheck_float64():
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, 2, 2])
    s = torch.tensor([1.0, 0.3, 0.7, 0.0])
    assert torch.autograd.gradcheck(lambda t: iq.soft_label_mse(t.double(), y, s, backend="torch").double(), (z,))


@pytest.mark.parametrize(
    "scores,msg",
    [([0.5, float("nan")], r"scores\[1\] = nan"), ([1.2, 0.5], r"scores\[0\] = 1.2"), ([0.5, -0.1], r"scores\[1\]")],
)
def test_bad_scores_rejected(scores, msg):
    with pytest.raises(ValueError, match=msg):
        iq.soft_label_mse(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor(scores))
    with pytest.raises(ValueError, match=msg):
        iq.soft_labels([0, 1], np.array(scores), num_classes=3)


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: iq.soft_labels([0, 3], [1, 1], num_classes=3), r"labels must lie in \[0, 3\)"),
        (lambda: iq.soft_labels([0.0, 1.0], [1, 1]), "integer"),
        (lambda: iq.soft_labels([0, 1], [1, 1, 1]), "one value per label"),
        (lambda: iq.soft_labels([0], [1], num_classes=1), "num_classes"),
        (lambda: iq.soft_labels([0], [1], transform="log"), "unknown transform"),
        (lambda: iq.soft_labels([0], [1], transform="power:-1"), "unknown transform"),
        (lambda: iq.soft_label_mse(np.zeros((2, 3)), [0, 1], [1, 1]), "logits must be"),
        (lambda: iq.soft_label_mse(torch.zeros(3, 3), [0, 1], [1, 1]), "same batch size"),
        (lambda: iq.soft_label_mse(torch.zeros(2, 3), [0, 1], [1, 1], backend="nope"), "backend must be"),
    ],
)
def test_bad_label_input_is_named(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_soft_labels_of_numpy_labels_and_torch_scores_requiring_grad(device):
    """Mixed inputs give a tensor on the scores' device through which the gradient reaches the scores
    (numpy labels turned a tensor requiring grad into a traceback: ``.numpy()`` of it)."""
    s = torch.tensor([0.8, 0.5], device=device, requires_grad=True)
    q = iq.soft_labels(np.array([2, 0]), s, num_classes=5)
    assert isinstance(q, torch.Tensor) and q.device == s.device and q.dtype == torch.float32 and q.requires_grad
    torch.testing.assert_close(q.detach().cpu(), torch.tensor([[0.05, 0.05, 0.8, 0.05, 0.05],
                                                               [0.5, 0.125, 0.125, 0.125, 0.125]]))
    q[:, 0].sum().backward()  # d q[0, 0] / d s0 = -1 / (K - 1) (off the true class), d q[1, 0] / d s1 = 1
    torch.testing.assert_close(s.grad.cpu(), torch.tensor([-0.25, 1.0]))
    q2 = iq.soft_labels(np.array([2, 0]), s.detach(), num_classes=5)  # no grad: still a tensor like the scores
    assert isinstance(q2, torch.Tensor) and q2.device == s.device
    assert isinstance(iq.soft_labels(np.array([2, 0]), [0.8, 0.5], num_classes=5), np.ndarray)  # numpy stays numpy


def test_loss_of_an_empty_batch_is_refused_with_its_shape(backend, device):
    """The mean over no image was a NaN carrying a gradient; every backend refuses it at the public entry."""
    z = torch.zeros(0, 10, device=device, requires_grad=True)
    y, s = torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, device=device)
    with pytest.raises(ValueError, match=r"logits hold an empty batch \(shape \(0, 10\)\)"):
        iq.soft_label_mse(z, y, s, backend=backend)


def test_strategies_as_data():
    assert sorted(iq.STRATEGIES) == list(range(1, 10))
    assert iq.STRATEGIES[1].kinds == () and not iq.STRATEGIES[1].iqa_ls
    assert iq.STRATEGIES[9].kinds == ("blur", "noise", "jpeg") and iq.STRATEGIES[9].iqa_ls
    assert [s.iqa_ls for s in iq.STRATEGIES.values()] == [False] + [False, True] * 4
    assert iq.LEVELS.blur == (0.7, 1.0, 1.2) and iq.LEVELS.noise == (0.005, 0.01, 0.02) and iq.LEVELS.jpeg == (12, 8, 4)


# ---------------------------------------------------------------------------------------------
# Every backend against the reference's autograd

@pytest.mark.against_reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k", [2, 10, 37, 1000])
@pytest.mark.parametrize("b", [1, 7, 100])
def test_loss_vs_reference_autograd(backend, device, b, k, dtype):
    z, y, s = loss_case(b, k, dtype, device)
    transform = "identity" if k != 37 else "power:2"
    r_loss, r_grad = eager_loss(z, y, s, transform)
    zt = z.detach().clone().requires_grad_()
    loss = iq.soft_label_mse(zt, y, s, transform, backend=backend)
    loss.backward()
    check_loss(loss.detach(), zt.grad, r_loss, r_grad, dtype)


@pytest.mark.against_reference
def test_loss_strided_logits_and_no_grad(backend, device):
    z, y, s = loss_case(9, 20, torch.float32, device)
    zs = z[:, ::2]  # stride 2 along K
    r_loss, r_grad = eager_loss(zs, y % 10, s, "affine:0.5")
    zt = zs.detach().clone().t().contiguous().t().requires_grad_()  # column-major storage
    loss = iq.soft_label_mse(zt, y % 10, s, "affine:0.5", backend=backend)
    loss.backward()
    check_loss(loss.detach(), zt.grad, r_loss, r_grad, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(iq.soft_label_mse(zs, y % 10, s, "affine:0.5", backend=backend).cpu(),
                                   r_loss.cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b", [100, 1000])
def test_loss_cuda_graph_replay(impl, device, b):
    """Forward + backward captured in a CUDA graph and replayed: every replay gives the eager result (new
    inputs copied into the static ones; Triton's in-kernel reduction resets its counter itself). The
    backend's function, as a graphed training step calls it (the public ``iq.soft_label_mse`` validates
    labels and scores on the host first)."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    z, y, s = loss_case(b, 10, torch.float32, device)  # one program; four (the in-kernel reduction)
    zs = z.detach().clone().requires_grad_()

    def step():
        loss = impl(zs, y, s)  # transform "identity": the on-true targets are the scores
        return loss.detach(), torch.autograd.grad(loss, zs)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: compile, allocate the kernel's scratch
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_loss, g_grad = step()
    for seed in (1, 2, 3):
        z2, _, _ = loss_case(1000, 10, torch.float32, device, seed=seed)
        with torch.no_grad():
            zs.copy_(z2[:b])
        graph.replay()
        r_loss, r_grad = eager_loss(z2[:b], y, s, "identity")
        check_loss(g_loss.clone(), g_grad.clone(), r_loss, r_grad, torch.float32)


# ---------------------------------------------------------------------------------------------
# The Triton adapter's custom op (iqals_fast/ops/triton.py)


@pytest.mark.backends("triton")
def test_loss_custom_op_opcheck(backend, device):
    from iqals_fast.ops import triton

    z, y, s = loss_case(6, 10, torch.float32, device)
    z.requires_grad_()
    torch.library.opcheck(triton.soft_label_mse_op, (z, y, s, True))
    torch.library.opcheck(triton.soft_label_mse_op, (z.detach(), y, s, False))


@pytest.mark.backends("triton")
def test_loss_compiles_without_graph_breaks(impl, device):
    """torch.compile traces the backend's loss (custom op + registered backward) as one graph.

    (The public ``iq.soft_label_mse`` validates labels and scores on the host first, which a
    compiled training step should do once outside the graph; this tests the op the dispatch returns.)
    """
    z, y, s = loss_case(7, 10, torch.float32, device)

    def fwd(logits, labels, scores):
        return impl(logits * 2.0, labels, scores**2)

    zt = z.detach().clone().requires_grad_()
    explained = torch._dynamo.explain(fwd)(zt, y, s)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "iqals_fast.soft_label_mse" in explained.graphs[0].code  # the custom op, traced as one node
    torch._dynamo.reset()
    loss = torch.compile(fwd, fullgraph=True, backend="aot_eager")(zt, y, s)
    loss.backward()
    zr = z.detach().clone().requires_grad_()
    r_loss = iq.soft_label_mse(zr * 2.0, y, s, "power:2", backend="torch")
    r_loss.backward()
    check_loss(loss.detach(), zt.grad, r_loss.detach(), zr.grad, torch.float32)


@pytest.mark.backends("triton")
def test_training_step_with_the_fused_loss_is_one_graph(impl, device):
    """The step train() compiles (train.make_forward: standardise, CNN, loss) with this backend's fused
    loss traces as one graph: the loss (and, on CPU, the C++ LRN) are custom-op nodes, not graph breaks."""
    from iqals_fast.model import PaperCNN
    from iqals_fast.train import TrainConfig, make_forward

    model = PaperCNN(seed=0).to(device)
    fwd = make_forward(model, impl, TrainConfig(compile=True), device)
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, device=device)
    y, s = torch.tensor([0, 1, 2, 3], device=device), torch.tensor([1.0, 0.9, 0.5, 0.7], device=device)
    explained = torch._dynamo.explain(fwd)(x, y, s)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    code = explained.graphs[0].code
    assert "iqals_fast.soft_label_mse" in code
    if device.type == "cpu":
        assert "iqals_fast.lrn" in code
    torch._dynamo.reset()


def test_auto_takes_the_reference_on_cpu_without_the_interpreter(device, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.resolve("soft_label_mse", "auto", torch.device("cpu"))[0] == "torch"
