"""Fleets: K training runs of Table 2's CNN trained as one grouped network.

    K x (strategy, seed) -> K epoch plans, batches, noise and soft labels (each run's own)
        -> FleetCNN: conv1/conv2 grouped (groups=K), LRN per group, fc layers as batched matmuls
        -> sum over runs of each run's Eq. 1 loss -> one SGD step over the stacked weights

Copy k of the fleet sees only run k's batch and the loss is the sum of the K per-run losses, so
the gradient of copy k's weights is exactly run k's own; SGD (without momentum, weight decay on
fc1/fc2) updates every weight element by itself, so the stacked update is the K separate updates.
A fleet therefore ends with the weights its runs would reach alone, up to float rounding (a
grouped convolution or a batched matmul sums in another order than a plain one: tests/test_fleet.py
measures the difference and bounds it). Each run keeps its own run directory, lock, config.json,
metrics.jsonl, checkpoint and evaluation, the same files as a single run's: the epoch loop is
train.py's, shared (``train.train_runs``). On a GPU a batch of 100 is launch-bound; a fleet of K
turns it into a batch of K x 100 in the same number of kernel launches.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import step_graph
from .data.sources import Dataset
from .distributed import World
from .model import PaperCNN, lrn_tf, max_pool_same, standardize
from .runs import resolve_data
from .train import TrainConfig, make_optimizer, train_runs

PER_RUN = ("strategy", "seed", "transform", "iqa", "out", "curve_every", "finetune_from")
"""The TrainConfig options in which the runs of a fleet may differ; they must agree on every other one
(epochs, batch size, train subset, lr schedule, data, device, backend, precision, compilation, layout)."""


def lrn_grouped(x: torch.Tensor, k: int, backend: str = "auto") -> torch.Tensor:
    """TensorFlow's LRN (``model.lrn_tf``) within each of the ``k`` channel groups of an N x (k*C) x H x W tensor,
    as one call of the dispatched LRN on a view. NCHW-contiguous: the memory of an (N*k) x C x H x W tensor.
    channels_last (memory order n, h, w, group, c): the memory of an N x C x H x (W*k) channels_last tensor,
    whose "pixel" w*k + g holds group g's C channels. Other layouts are made channels_last first."""
    n, c, h, w = x.shape
    if k == 1:
        return lrn_tf(x, backend)
    if x.is_contiguous():
        return lrn_tf(x.view(n * k, c // k, h, w), backend).reshape(n, c, h, w)
    x = x.contiguous(memory_format=torch.channels_last)
    y = lrn_tf(x.permute(0, 2, 3, 1).view(n, h, w * k, c // k).permute(0, 3, 1, 2), backend)
    return y.permute(0, 2, 3, 1).reshape(n, h, w, c).permute(0, 3, 1, 2)


def group(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """K x N x 3 x H x W (one batch per run) -> N x 3K x H x W, run k's image in channels 3k..3k+2 (the input of
    the grouped conv1), in the chosen memory format (one copy)."""
    k, n, c, h, w = x.shape
    if channels_last:
        return x.permute(1, 3, 4, 0, 2).reshape(n, h, w, k * c).permute(0, 3, 1, 2)
    return x.transpose(0, 1).reshape(n, k * c, h, w)


def _image_size(fc1_in: int) -> int:
    """An image size of the CNN whose fc1 takes ``fc1_in`` inputs (64 x side x side): 4 x side, whose two SAME
    stride-2 pools give side x side (the only way the image size enters the weights' shapes)."""
    return 4 * math.isqrt(fc1_in // 64)


class _Linears(nn.Module):
    """K fully connected layers, ``y_k = x_k W_k^T + b_k``, as one batched matmul: K x N x in -> K x N x out.
    ``weight`` K x in x out holds the K layers' W_k^T (nn.Linear's weight transposed), ``bias`` K x out their b_k.
    Stored transposed so that the weight's gradient (``bmm`` of x^T and the output's gradient) comes out in the
    weight's own layout: a fused optimizer that reads gradients as dense memory (torch's fused SGD, which
    step_graph runs, ignores a gradient's strides) then updates the right elements."""

    def __init__(self, k: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(k, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class FleetCNN(nn.Module):
    """K PaperCNNs stacked as one network: ``forward(x)`` of K x N x 3 x H x W standardised images (run k's batch
    in ``x[k]``) gives K x N x classes logits, copy k's from its own weights and its own images only.

    conv1 (3K -> 64K) and conv2 (64K -> 64K) are grouped convolutions (``groups=K``; output channels 64k..64k+63
    are copy k's), the LRN runs within each group (``lrn_grouped``), the max-pooling is PaperCNN's SAME pooling,
    the flatten is TF's NHWC order per copy, fc1-fc3 are batched matmuls. Build one with :meth:`stack` (the
    weights of K PaperCNNs, copied exactly); :meth:`unstack` copies them out again."""

    def __init__(self, k: int, num_classes: int = 10, image_size: int = 32, lrn_backend: str = "auto"):
        super().__init__()
        if k < 1:
            raise ValueError(f"a fleet needs at least one run, got k={k}")
        self.k, self.num_classes, self.lrn_backend = k, num_classes, lrn_backend
        self.conv1 = nn.Conv2d(3 * k, 64 * k, 5, padding=2, groups=k)
        self.conv2 = nn.Conv2d(64 * k, 64 * k, 5, padding=2, groups=k)
        side = math.ceil(math.ceil(image_size / 2) / 2)  # two SAME stride-2 pools, as PaperCNN
        self.fc1 = _Linears(k, 64 * side * side, 384)
        self.fc2 = _Linears(k, 384, 192)
        self.fc3 = _Linears(k, 192, num_classes)

    @classmethod
    def stack(cls, models: list[PaperCNN]) -> FleetCNN:
        """A fleet holding exact copies of ``models``' weights (on the first model's device), copy k = models[k]."""
        if not models:
            raise ValueError("FleetCNN.stack needs at least one PaperCNN")
        first = models[0]
        for i, m in enumerate(models[1:], 1):
            diff = [name for name, p in first.state_dict().items() if m.state_dict()[name].shape != p.shape]
            if diff or m.lrn_backend != first.lrn_backend:
                what = f"the shapes of {', '.join(diff)}" if diff else "lrn_backend"
                raise ValueError(f"FleetCNN.stack: model {i} differs from model 0 in {what} (other image size or "
                                 "classes): a fleet stacks copies of one shape")
        fleet = cls(len(models), first.fc3.out_features, _image_size(first.fc1.in_features), first.lrn_backend)
        fleet.to(first.conv1.weight.device)
        with torch.no_grad():
            for name in ("conv1", "conv2"):
                for t in ("weight", "bias"):
                    getattr(getattr(fleet, name), t).copy_(torch.cat([getattr(getattr(m, name), t) for m in models]))
            for name in ("fc1", "fc2", "fc3"):
                layers = [getattr(m, name) for m in models]
                getattr(fleet, name).weight.copy_(torch.stack([a.weight.t() for a in layers]))
                getattr(fleet, name).bias.copy_(torch.stack([a.bias for a in layers]))
        return fleet

    def unstack_into(self, models: list[PaperCNN]) -> list[PaperCNN]:
        """Copy the K copies' weights into ``models`` (K PaperCNNs of the fleet's shape), exactly; returns them."""
        if len(models) != self.k:
            raise ValueError(f"unstack_into needs {self.k} models, got {len(models)}")
        with torch.no_grad():
            for k, m in enumerate(models):
                for name in ("conv1", "conv2"):
                    for t in ("weight", "bias"):
                        c = getattr(getattr(m, name), t)
                        c.copy_(getattr(getattr(self, name), t)[k * c.shape[0]:(k + 1) * c.shape[0]])
                for name in ("fc1", "fc2", "fc3"):
                    getattr(m, name).weight.copy_(getattr(self, name).weight[k].t())
                    getattr(m, name).bias.copy_(getattr(self, name).bias[k])
        return models

    def unstack(self) -> list[PaperCNN]:
        """K new PaperCNNs (on the fleet's device) holding exact copies of the K copies' weights."""
        size, dev = _image_size(self.fc1.weight.shape[1]), self.conv1.weight.device
        return self.unstack_into([PaperCNN(self.num_classes, size, lrn_backend=self.lrn_backend).to(dev)
                                  for _ in range(self.k)])

    def decayed_parameters(self) -> list[nn.Parameter]:
        """The stacked weights that carry L2 weight decay: every copy's fc1 and fc2 weights."""
        return [self.fc1.weight, self.fc2.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[0] != self.k or x.shape[2] != 3:
            raise ValueError(f"FleetCNN.forward needs K x N x 3 x H x W images with K = {self.k}, got "
                             f"{tuple(x.shape)}")
        cl = self.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        return self.forward_grouped(group(x, cl))

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """The fleet on N x 3K x H x W images (``group``'s layout) -> K x N x classes logits. As PaperCNN.forward:
        ReLU after the pool (max-pooling commutes with it), LRN per group."""
        x = lrn_grouped(F.relu(max_pool_same(self.conv1(x))), self.k, self.lrn_backend)
        x = max_pool_same(lrn_grouped(F.relu(self.conv2(x)), self.k, self.lrn_backend))
        n, c, h, w = x.shape
        # per copy, TF's NHWC flatten: N x 64K x h x w -> K x N x (h * w * 64)
        x = x.reshape(n, self.k, c // self.k, h, w).permute(1, 0, 3, 4, 2).reshape(self.k, n, -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_fleet_forward(fleet: FleetCNN, loss_fn, cfg: TrainConfig, device: torch.device):
    """``forward(x_u8, labels, on_true) -> (loss, loss per run, correct per run)``: standardise every image, the
    fleet, Eq. 1. With equal batch sizes sum_k mean_n = K x the mean over the K x N rows, so the loss whose
    gradient is every run's own is the fused soft-label MSE of the flattened rows times K; the per-run losses
    (what each run logs) are the same loss on each run's rows, without gradient."""
    amp = cfg.amp_dtype(device)
    cl = cfg.speed(device)[1]

    def forward(x_u8, labels, on_true):
        k, n = labels.shape
        x = standardize(x_u8.flatten(0, 1)).unflatten(0, (k, n))
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = fleet.forward_grouped(group(x, cl))
        logits = logits.float()
        loss = loss_fn(logits.flatten(0, 1), labels.flatten(), on_true.flatten()) * k
        with torch.no_grad():
            per_run = torch.stack([loss_fn(logits[i], labels[i], on_true[i]) for i in range(k)])
        return loss, per_run, (logits.argmax(2) == labels).sum(1)

    return forward


def make_fleet_step(fleet: FleetCNN, opt: torch.optim.Optimizer, loss_fn, cfgs: list[TrainConfig],
                    device: torch.device):
    """One SGD step of every run of the fleet: ``step(x_u8 K x N x H x W x 3 uint8, labels K x N int64, on_true
    K x N float32) -> (loss per run K, correct per run K)``, both detached: train.make_step's contract, per run,
    and its paths (``step_graph.training_step``: the per-run losses and counts travel as the step's stats)."""
    cfg = cfgs[0]
    forward = make_fleet_forward(fleet, loss_fn, cfg, device)

    def packed(x_u8, labels, on_true):  # the step's (loss, stats) contract: the per-run figures as its stats
        loss, per_run, correct = forward(x_u8, labels, on_true)
        return loss, torch.stack([per_run, correct.to(per_run.dtype)])  # counts <= batch size: exact in float32

    inner = step_graph.training_step(packed, opt, cfg, device)

    def step(x_u8, labels, on_true):
        _, stats = inner(x_u8, labels, on_true)
        return stats[0], stats[1].long()

    return step


def check_fleet(cfgs: list[TrainConfig]) -> None:
    """Refuse (ValueError naming the option) runs that cannot train as one fleet: they must agree on every option
    but ``PER_RUN`` (the data compared as resolved paths), and have distinct run directories."""
    if not cfgs:
        raise ValueError("a fleet needs at least one run")
    first = cfgs[0]
    for c in cfgs[1:]:
        for f in fields(TrainConfig):
            a, b = getattr(first, f.name), getattr(c, f.name)
            if f.name == "data":
                a, b = resolve_data(a), resolve_data(b)
            if f.name not in PER_RUN and a != b:
                raise ValueError(f"the runs of a fleet must share --{f.name.replace('_', '-')}: "
                                 f"strategy {first.strategy} seed {first.seed} has {a!r}, "
                                 f"strategy {c.strategy} seed {c.seed} has {b!r}")
    seen: dict[Path, TrainConfig] = {}
    for c in cfgs:
        d = c.run_dir().resolve()
        if d in seen:
            raise ValueError(f"two runs of the fleet write the same run directory {c.run_dir()} (strategy "
                             f"{seen[d].strategy} seed {seen[d].seed} and strategy {c.strategy} seed {c.seed})")
        seen[d] = c


class FleetTrainer:
    """The K runs of a fleet as ``train.train_runs`` trains them: per-run PaperCNNs and optimizers (what each run
    directory restores into and saves from), stacked into one FleetCNN with one SGD optimizer for the steps."""

    def __init__(self, cfgs: list[TrainConfig], datasets: list[Dataset], protocol, device: torch.device, w: World):
        if w.size > 1:
            raise ValueError("a fleet trains in one process: run it without torchrun (or train its runs one by one)")
        cl = cfgs[0].speed(device)[1]
        self.cfgs, self.device, self.protocol = cfgs, device, protocol
        self.models = []
        for c, ds in zip(cfgs, datasets):
            m = PaperCNN(ds.num_classes, ds.train_x.shape[1], seed=c.seed)
            self.models.append((m.to(memory_format=torch.channels_last) if cl else m).to(device))
        self.opts = [make_optimizer(m, protocol.lr, protocol.weight_decay) for m in self.models]
        self.name = f"fleet of {len(cfgs)}"
        self.fleet = self.opt = None

    def make_step(self, loss_fn):
        """Stack the (restored) per-run models into the fleet; its optimizer and step."""
        fleet = FleetCNN.stack(self.models)
        self.fleet = fleet.to(memory_format=torch.channels_last) if self.cfgs[0].speed(self.device)[1] else fleet
        self.opt = make_optimizer(self.fleet, self.protocol.lr, self.protocol.weight_decay)
        return make_fleet_step(self.fleet, self.opt, loss_fn, self.cfgs, self.device)

    def set_lr(self, lr: float) -> None:
        for opt in (self.opt, *self.opts):
            for g in opt.param_groups:
                g["lr"] = lr

    def train(self) -> None:
        self.fleet.train()

    def batches(self, epoch: list):
        """The runs' epochs (``EpochBatches``, one per run) step by step, stacked: K x B images, labels, targets."""
        for parts in zip(*epoch):
            yield tuple(torch.stack(t) for t in zip(*parts))

    def runs(self) -> list[tuple[PaperCNN, torch.optim.Optimizer]]:
        """Each run's model (the fleet's weights copied out) and optimizer, as a single run saves them. SGD without
        momentum keeps no state, so a run's optimizer state is its param groups alone (the lr set per epoch)."""
        if self.opt.state:
            raise RuntimeError("the fleet's optimizer keeps per-parameter state, which FleetTrainer.runs cannot "
                               "split between runs yet")
        self.fleet.unstack_into(self.models)
        return list(zip(self.models, self.opts))


def train_fleet(cfgs: list[TrainConfig], *, resume: bool = False, dataset: Dataset | None = None,
                progress: bool = True, stop_after: int | None = None) -> list[Path]:
    """Train the runs ``cfgs`` as one fleet; return their run directories (in order). Each run directory is
    exactly a single run's (train.train's), written under its own lock; ``resume`` resumes every run, which
    must all be at the same epoch. The runs must agree on every option but ``PER_RUN`` (``check_fleet``)."""
    for c in cfgs:
        c.validate()  # settles each run's precision (a resumed run's own) before the runs are compared
    check_fleet(cfgs)
    return train_runs(cfgs, FleetTrainer, resume=resume, dataset=dataset, progress=progress, stop_after=stop_after)
