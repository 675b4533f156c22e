"""Triton kernels of iqals-fast: one file per kernel, each holding the ``@triton.jit`` kernel and its launcher.

Installed as ``iqals_fast.kernels`` (pyproject maps this top-level folder into the package). The
package reaches them only through ``iqals_fast.ops.triton_backend`` and the one dispatch point.

- ``distort_ssim``: blur and/or noise, round to uint8 and SSIM against the pristine image, one pass.
- ``soft_label_mse``: softmax, the IQA-LS target, the loss and its logits gradient, one pass.
"""
