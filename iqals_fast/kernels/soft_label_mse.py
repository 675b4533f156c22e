"""The IQA-LS loss (Eq. 1 with the Eq. 2 target), its value and its logits gradient in one pass.

Reference (``iqals_fast.ops.reference.soft_label_mse``) in eager PyTorch: softmax, the target
(fill, scatter), subtract, square, row sum, mean, and as many kernels again for autograd: about 20
launches and 8 B x K round trips. Here the forward is one launch (read the logits once, write the
loss and, when a gradient is wanted, the gradient for a unit upstream gradient, in the logits' dtype)
and the backward is one elementwise multiply by the upstream gradient (a 0-d tensor: no host sync).

Maths, per row b with logits z (K), label y, on-true target t = T(score):
    p = softmax(z),  q_y = t,  q_k = (1 - t) / (K - 1) for k != y,  d = p - q
    L = (1 / B) sum_b sum_k d_k^2
    dL/dp_k = (2 / B) d_k,   dp_k/dz_j = p_k (delta_kj - p_j)
    dL/dz_j = sum_k (2 / B) d_k p_k (delta_kj - p_j) = (2 / B) p_j (d_j - <d, p>)
All in float32 whatever the logits' dtype (the reference upcasts too). K is processed in blocks of
BLOCK_K with an online max/sum (Milakov & Gimelshein 2018) when it does not fit one block.

The batch mean is reduced deterministically inside the same launch. A single program (B <= BLOCK_B,
e.g. the paper's batch of 100 at K = 10) stores it directly. Otherwise each program writes its partial
sum, takes a ticket from an atomic counter (acq_rel, after a CTA barrier), and the program that draws
the last ticket adds the partials in program order and resets the counter for the next launch (so
the launch can be captured in a CUDA graph and replayed). With ``REDUCE_IN_KERNEL=False`` the
launcher adds the partials instead (one more small launch).

Host cost (what a small batch pays): the forward allocates the loss and the gradient and makes one
launch; the partial sums and the counter are per-device scratch, allocated once. The tile shape
depends on K only (BLOCK_B = ELEMENTS_PER_PROGRAM / BLOCK_K), so a new batch size compiles nothing.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

ELEMENTS_PER_PROGRAM = 4096  # BLOCK_B * BLOCK_K: a tile of logits per program
MAX_BLOCK_K = 1024  # wider rows are walked in blocks
REDUCE_BLOCK = 1024  # partial sums added per step by the last program
REDUCE_IN_KERNEL = True


@triton.jit
def _row_target(cols, y, t, off):
    return tl.where(cols[None, :] == y[:, None], t[:, None], off[:, None])


@triton.jit(do_not_specialize=["B", "K", "stride_b"])
def soft_label_mse_fwd_kernel(
    z_ptr, stride_b, labels_ptr, on_true_ptr, grad_ptr, partial_ptr, counter_ptr, loss_ptr,
    B, K, inv_b, inv_km1,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_BLOCK: tl.constexpr, STORE_GRAD: tl.constexpr,
    REDUCE_IN_KERNEL: tl.constexpr, RBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    # -- Stage 1: the row's label and target; masked rows get a harmless all-zero row
    y = tl.load(labels_ptr + rows, mask=row_ok, other=0).to(tl.int32)
    t = tl.load(on_true_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)
    off = (1.0 - t) * inv_km1
    cols0 = tl.arange(0, BLOCK_K)
    if ONE_BLOCK:
        # -- Stage 2: the whole row in registers: softmax, d = p - q, loss row, gradient
        col_ok = cols0 < K
        mask = row_ok[:, None] & col_ok[None, :]
        z = tl.load(z_ptr + rows64[:, None] * stride_b + cols0[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m = tl.max(z, axis=1)
        e = tl.exp(z - m[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        d = tl.where(col_ok[None, :], p - _row_target(cols0, y, t, off), 0.0)
        loss_row = tl.sum(d * d, axis=1)
        if STORE_GRAD:
            dp = tl.sum(d * p, axis=1)
            g = (2.0 * inv_b) * p * (d - dp[:, None])
            tl.store(grad_ptr + rows64[:, None] * K + cols0[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        # -- Stage 2a: online max and normaliser over blocks of K
        m = tl.full((BLOCK_B,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_B,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + cols0
            col_ok = cols < K
            z = tl.load(z_ptr + rows64[:, None] * stride_b + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
            z = tl.where(col_ok[None, :], z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
            m = m_new
        # -- Stage 2b: d = p - q, the loss row and <d, p>
        loss_row = tl.zeros((BLOCK_B,), tl.float32)
        dp = tl.zeros((BLOCK_B,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + cols0
            col_ok = cols < K
            z = tl.load(z_ptr + rows64[:, None] * stride_b + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
            p = tl.where(col_ok[None, :], tl.exp(z - m[:, None]) / s[:, None], 0.0)
            d = tl.where(col_ok[None, :], p - _row_target(cols, y, t, off), 0.0)
            loss_row += tl.sum(d * d, axis=1)
            dp += tl.sum(d * p, axis=1)
        # -- Stage 2c: the gradient, block by block
        if STORE_GRAD:
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + cols0
                col_ok = cols < K
                mask = row_ok[:, None] & col_ok[None, :]
                z = tl.load(z_ptr + rows64[:, None] * stride_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                p = tl.exp(z - m[:, None]) / s[:, None]
                d = p - _row_target(cols, y, t, off)
                g = (2.0 * inv_b) * p * (d - dp[:, None])
                tl.store(grad_ptr + rows64[:, None] * K + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)
    # -- Stage 3: the batch mean, reduced in program order by the last program to finish
    partial = tl.sum(tl.where(row_ok, loss_row, 0.0), axis=0)
    if REDUCE_IN_KERNEL and nprog == 1:
        # one program (B <= BLOCK_B: a training batch of 100 at K <= 16): its sum is the batch's, no
        # partials, no atomics (the same value the reduction below gives: the sum of one partial)
        tl.store(loss_ptr, partial * inv_b)
    elif REDUCE_IN_KERNEL:
        tl.store(partial_ptr + pid, partial)
        tl.debug_barrier()  # every thread's stores precede the release below
        ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
        if ticket == nprog - 1:
            acc = tl.zeros((RBLOCK,), tl.float32)
            for i0 in range(0, nprog, RBLOCK):
                idx = i0 + tl.arange(0, RBLOCK)
                acc += tl.load(partial_ptr + idx, mask=idx < nprog, other=0.0, cache_modifier=".cg")
            tl.store(loss_ptr, tl.sum(acc, axis=0) * inv_b)
            tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")  # ready for the next launch
    else:
        tl.store(partial_ptr + pid, partial)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _scratch(device: torch.device, nprog: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial sums, ticket counter) for launches of nprog programs on one device.

    The counter is zero between launches (the last program resets it). Launches on one device are
    ordered by its stream, so they never use the scratch at once (concurrent streams would need
    their own). Allocated on first use: warm up before capturing a CUDA graph.
    """
    return (torch.empty(nprog, dtype=torch.float32, device=device),
            torch.zeros(1, dtype=torch.int32, device=device))


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def soft_label_mse_fwd(logits: torch.Tensor, labels: torch.Tensor, on_true: torch.Tensor, store_grad: bool,
                       block_k: int | None = None, reduce_in_kernel: bool | None = None):
    """(loss: float32 0-d tensor, grad: B x K dL/dlogits for a unit upstream gradient in the logits'
    dtype, or an empty tensor).

    logits: B x K float (fp32, bf16, fp16), unit stride along K; labels: B integers in [0, K);
    on_true: B float32 targets of the true class (the transform already applied).
    """
    if logits.ndim != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a 2-D float tensor, got {logits.dtype} {tuple(logits.shape)}")
    b, k = logits.shape
    if k < 2:
        raise ValueError(f"the loss needs K >= 2 classes, got {k}")
    if labels.shape != (b,) or on_true.shape != (b,):
        raise ValueError(
            f"labels and on_true must have shape ({b},), got {tuple(labels.shape)}, {tuple(on_true.shape)}")
    dev = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if labels.stride(0) != 1:
        labels = labels.contiguous()
    if on_true.dtype != torch.float32 or on_true.stride(0) != 1:
        on_true = on_true.to(torch.float32).contiguous()
    loss = torch.empty((), dtype=torch.float32, device=dev)
    grad = torch.empty((b, k) if store_grad else (0,), dtype=logits.dtype, device=dev)
    if b == 0:
        return loss.fill_(float("nan")), grad  # the mean of nothing, as torch's mean gives
    block_k = min(_pow2(k), MAX_BLOCK_K) if block_k is None else int(block_k)
    block_b = max(1, ELEMENTS_PER_PROGRAM // block_k)
    nprog = triton.cdiv(b, block_b)
    partials, counter = _scratch(dev, nprog)
    in_kernel = REDUCE_IN_KERNEL if reduce_in_kernel is None else bool(reduce_in_kernel)
    soft_label_mse_fwd_kernel[(nprog,)](
        logits, logits.stride(0), labels, on_true, grad if store_grad else partials, partials, counter, loss,
        b, k, 1.0 / b, 1.0 / (k - 1),
        BLOCK_B=block_b, BLOCK_K=block_k, ONE_BLOCK=k <= block_k, STORE_GRAD=bool(store_grad),
        REDUCE_IN_KERNEL=in_kernel, RBLOCK=REDUCE_BLOCK, num_warps=4,
    )
    if not in_kernel:
        loss = partials.sum() / b
    return loss, grad


def soft_label_mse_bwd(grad: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """dL/dlogits = grad_out * grad: grad from the forward (logits' dtype), grad_out a 0-d tensor read on
    the device (no host sync). One elementwise kernel; a 0-d float32 factor keeps grad's dtype."""
    return grad * grad_out
