"""Triton kernels of iqals-fast, one file per operation, each the ``@triton.jit`` kernel and its launcher.

Reached through ``iqals_fast.ops.triton`` (the ``triton`` backend of the dispatch table); each file
takes its constants as arguments and imports nothing from the package.

- ``distort_and_score``: blur and/or noise, round to uint8 and SSIM against the pristine image, one
  pass (also the ``ssim`` op: score only).
- ``soft_label_mse``: softmax, the IQA-LS target, the loss and its logits gradient, one pass.
"""
