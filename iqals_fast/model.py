"""The paper's CNN (Table 1): the TensorFlow CIFAR-10 tutorial network on full 32 x 32 inputs.

    conv 5x5x64 (SAME) -> ReLU -> max-pool 3x3/2 (SAME) -> LRN
    conv 5x5x64 (SAME) -> ReLU -> LRN -> max-pool 3x3/2 (SAME)
    fc 384 -> ReLU -> fc 192 -> ReLU -> fc 10 (logits)

TensorFlow specifics reproduced exactly:
- ``tf.nn.lrn(depth_radius=4, bias=1.0, alpha=0.001/9, beta=0.75)``:
  ``b_c = a_c / (bias + alpha * sum_{|c'-c| <= 4} a_c'^2) ** beta``. PyTorch's LocalResponseNorm
  divides alpha by the window size n, so the match is ``n = 9, alpha = 0.001`` (tested). On CPU
  the C++ kernels of csrc/lrn.cpp compute it (``ops.api.lrn``): the composite was most of the step.
- SAME max-pooling with stride 2 pads only at the bottom/right (TF puts the odd padding there);
  PyTorch's symmetric ``padding=1`` would shift every window, so we pad explicitly.
- Initialisation: truncated normals (cut at 2 std) with std 5e-2 (convs), 0.04 (fc 384, 192),
  1/192 (logits); biases 0, 0.1, 0.1, 0.1, 0.
- Input: per-image standardisation ``(x - mean) / max(std, 1/sqrt(numel))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.api import lrn

LRN_DEPTH_RADIUS = 4
LRN_BIAS = 1.0
LRN_ALPHA = 0.001 / 9.0
LRN_BETA = 0.75


def lrn_tf(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """TensorFlow's LRN with the tutorial's parameters, by the dispatched backend (``ops.api.lrn``): the
    C++ kernels on CPU, PyTorch's composite (``ops.reference.lrn``, fused by torch.compile) elsewhere."""
    return lrn(x, LRN_DEPTH_RADIUS, LRN_BIAS, LRN_ALPHA, LRN_BETA, backend)


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """TF max_pool(ksize 3, stride 2, padding SAME).

    Where SAME pads at most one row / column, all at the bottom / right (even sizes, as 32 and 16),
    ``ceil_mode`` gives exactly TF's windows without materialising a padded copy (whose copy and
    backward cost more than the pooling itself); otherwise the input is padded with -inf.
    """
    h, w = x.shape[-2:]
    ph = max((-(-h // 2) - 1) * 2 + 3 - h, 0)
    pw = max((-(-w // 2) - 1) * 2 + 3 - w, 0)
    if ph <= 1 and pw <= 1:
        return F.max_pool2d(x, 3, 2, ceil_mode=True)
    return max_pool_same_padded(x)


def max_pool_same_padded(x: torch.Tensor) -> torch.Tensor:
    """TF max_pool(ksize 3, stride 2, padding SAME) by explicit -inf padding: the reference."""
    h, w = x.shape[-2:]
    ph = max((-(-h // 2) - 1) * 2 + 3 - h, 0)
    pw = max((-(-w // 2) - 1) * 2 + 3 - w, 0)
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


def standardize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W, per-image standardised (tf.image.per_image_standardization)."""
    x = images_u8.to(torch.float32)
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1.0 / n**0.5)
    return ((x - mean) / std).permute(0, 3, 1, 2)


def _trunc_normal_(t: torch.Tensor, std: float, gen: torch.Generator) -> None:
    # TF's truncated_normal: resample outside two standard deviations.
    with torch.no_grad():
        v = torch.randn(t.shape, generator=gen)
        bad = v.abs() > 2
        while bad.any():
            v[bad] = torch.randn(int(bad.sum()), generator=gen)
            bad = v.abs() > 2
        t.copy_(v * std)


class PaperCNN(nn.Module):
    def __init__(self, num_classes: int = 10, image_size: int = 32, seed: int = 0, lrn_backend: str = "auto",
                 reference: bool = False):
        super().__init__()
        self.lrn_backend = lrn_backend
        self.reference = reference  # forward_reference() instead of the fast forward()
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        side = math.ceil(math.ceil(image_size / 2) / 2)  # two SAME stride-2 pools
        self.fc1 = nn.Linear(64 * side * side, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)
        gen = torch.Generator().manual_seed(seed)
        for layer, std, bias in ((self.conv1, 5e-2, 0.0), (self.conv2, 5e-2, 0.1), (self.fc1, 0.04, 0.1),
                                 (self.fc2, 0.04, 0.1), (self.fc3, 1 / 192.0, 0.0)):
            _trunc_normal_(layer.weight, std, gen)
            nn.init.constant_(layer.bias, bias)

    def decayed_parameters(self) -> list[nn.Parameter]:
        """The weights that carry L2 weight decay (the two hidden fully connected layers)."""
        return [self.fc1.weight, self.fc2.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return self.forward_reference(x)
        # ReLU after the pool instead of before: max-pooling commutes with any non-decreasing map,
        # so values and gradients are exactly the same, on a quarter of the elements.
        x = lrn_tf(F.relu(max_pool_same(self.conv1(x))), self.lrn_backend)
        x = max_pool_same(lrn_tf(F.relu(self.conv2(x)), self.lrn_backend))
        return self._head(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Table 1 written the plain way, in PyTorch's own ops: conv, ReLU, padded pool, composite LRN.
        The reference of forward() (tests), and the eager baseline of ``iqals-fast bench``."""
        x = lrn_tf(max_pool_same_padded(F.relu(self.conv1(x))), "torch")
        x = max_pool_same_padded(lrn_tf(F.relu(self.conv2(x)), "torch"))
        return self._head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x.permute(0, 2, 3, 1), 1)  # flatten in TF's NHWC order
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
