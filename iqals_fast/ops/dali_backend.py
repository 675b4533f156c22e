"""The dali backend: JPEG through NVIDIA DALI (``fn.jpeg_compression_distortion``, data/dali.py).

DALI's CPU operator is libjpeg-turbo with PIL's settings, so its bytes equal the torch backend's
(PIL) bit for bit (tests/test_dali.py, on generated and real images at every paper quality), and it
is about 4.5x faster than PIL's thread pool on a 2-core CPU (bench/results/dali-cpu-*.md). It is
registered for CPU and CUDA tensors alike and always encodes on the CPU operator: DALI's GPU encoder
is not libjpeg (no entropy coding) and would change the training data. Where DALI is not installed
it registers nothing and the torch backend (PIL) serves JPEG.
"""

from __future__ import annotations

import torch

from ..data import dali
from . import dispatch


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    return dali.jpeg(images, int(quality), device="cpu")


if dali.available():
    dispatch.register("jpeg", "dali", jpeg, lambda device: device.type in ("cpu", "cuda"))
