"""The epoch mixture: the plan, the distorted epoch data, and ``epoch_batches``, the batches train() consumes."""

import numpy as np
import pytest
import torch

import iqals_fast as iq
import iqals_fast.train as T
from iqals_fast.config import KIND_LEVELS, KINDS, STRATEGIES
from iqals_fast.data.mixture import (
    DistortionCache,
    batch_order,
    counts,
    epoch_batches,
    epoch_data,
    epoch_plan,
    mean_quality,
    noise_seed,
    training_cache,
)
from iqals_fast.data.sources import synthetic
from iqals_fast.ops.labels import apply_transform


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("n", [100, 2000, 50000, 7])
def test_mixture_counts_exact(n):
    c = counts(n)
    assert sum(c) == n and c[1:] == [int(n * 0.15), int(n * 0.15), int(n * 0.10)]


def test_epoch_plan_proportions_and_determinism():
    p = epoch_plan(2000, KINDS, seed=1, epoch=3)
    assert np.bincount(p.level).tolist() == [1200, 300, 300, 200]
    for lvl in (1, 2, 3):  # MIX_all3: kinds split evenly within each level
        k = np.bincount(p.kind[p.level == lvl], minlength=3)
        assert k.max() - k.min() <= 1
    assert (p.kind[p.level == 0] == -1).all()
    q = epoch_plan(2000, KINDS, seed=1, epoch=3)
    np.testing.assert_array_equal(p.level, q.level)
    np.testing.assert_array_equal(p.kind, q.kind)
    assert (epoch_plan(2000, KINDS, seed=1, epoch=4).level != p.level).any()
    assert p.noise_seed == noise_seed(1, 3) != noise_seed(1, 4)
    assert (epoch_plan(50, (), 0, 0).level == 0).all()
    single = epoch_plan(1000, ("jpeg",), 0, 0)
    assert set(single.kind[single.level > 0]) == {KINDS.index("jpeg")}


def test_epoch_data_uses_the_plan(gen):
    x = gen(40, 32, 32)
    plan = epoch_plan(40, KINDS, seed=0, epoch=0)
    cache = DistortionCache(x, backend="torch")
    y, s = epoch_data(cache, plan)
    pristine = plan.level == 0
    np.testing.assert_array_equal(y[pristine], x[pristine])
    assert (s[pristine] == 1).all() and (s[~pristine] < 1).all()
    i = int(np.flatnonzero(plan.level == 2)[0])
    ref = iq.distort(x[i:i + 1], KINDS[plan.kind[i]], 2, seed=plan.noise_seed, ids=[i])
    np.testing.assert_array_equal(y[i:i + 1], ref)


def test_epoch_data_on_torch_images_equals_numpy(tmp_path, monkeypatch):
    """The cache on torch images (how train keeps them on a GPU) gives the numpy path's images and scores."""
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path))
    ds = synthetic(300, 10)
    plan = epoch_plan(300, ("blur", "noise", "jpeg"), 1, 0)
    idx = np.random.default_rng(0).permutation(300)[:150]
    xa, sa = epoch_data(DistortionCache(ds.train_x), plan, idx)
    xb, sb = epoch_data(DistortionCache(torch.from_numpy(ds.train_x)), plan, idx)
    assert isinstance(xb, torch.Tensor) and isinstance(sb, torch.Tensor)
    np.testing.assert_array_equal(xb.numpy(), xa)
    np.testing.assert_array_equal(sb.numpy(), sa)
    xall, sall = epoch_data(DistortionCache(ds.train_x), plan)  # a share = the same rows of the whole
    np.testing.assert_array_equal(xall[idx], xa)
    np.testing.assert_array_equal(sall[idx], sa)


# ----------------------------------------------------------------------------------------------
# epoch_batches


def _inline_epoch(cache, ds, strategy, seed, epoch, batch_size, transform, rank, size):
    """What train() built inline for one epoch before epoch_batches existed (its code, verbatim but
    for names): the reference the generator must reproduce exactly."""
    n = len(ds.train_y)
    plan = epoch_plan(n, strategy.kinds, seed, epoch)
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, 2])).permutation(n)
    mine = order[rank::size]
    x, s = epoch_data(cache, plan, mine)
    x = torch.as_tensor(x, device="cpu")
    labels = torch.from_numpy(ds.train_y[mine]).to("cpu")
    scores = torch.as_tensor(s, device="cpu") if strategy.iqa_ls else torch.ones(len(mine), device="cpu")
    on_true = apply_transform(scores, transform, ds.num_classes)
    local_batch, steps = batch_size // size, -(-n // batch_size)
    return [(x[sl], labels[sl], on_true[sl]) for b in range(steps)
            for sl in [slice(b * local_batch, (b + 1) * local_batch)]]


def _same_batches(got, want):
    assert len(got) == len(want)
    for (x, y, t), (x0, y0, t0) in zip(got, want):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and t.dtype == torch.float32
        torch.testing.assert_close(x, x0, rtol=0, atol=0)
        torch.testing.assert_close(y, y0, rtol=0, atol=0)
        torch.testing.assert_close(t, t0, rtol=0, atol=0)


@pytest.mark.parametrize("strategy,transform,rank,size", [(9, "identity", 0, 1), (3, "power:2", 0, 1), (4, "identity", 0, 1),
                                                          (9, "identity", 1, 2), (1, "identity", 0, 1)])
def test_epoch_batches_are_what_train_built_inline(strategy, transform, rank, size):
    ds = synthetic(230, 10)  # 230 images in batches of 50: four full steps and a partial one
    cache = DistortionCache(ds.train_x)
    for epoch in (0, 3):
        got = epoch_batches(cache, ds, STRATEGIES[strategy], seed=5, epoch=epoch, batch_size=50, transform=transform,
                            rank=rank, size=size)
        assert len(got) == 5 and got.local_batch == 50 // size
        _same_batches(list(got), _inline_epoch(cache, ds, STRATEGIES[strategy], 5, epoch, 50, transform, rank, size))


def test_epoch_batches_content():
    """Each step's batch: the planned images (pristine as they are, the others distorted as planned, with
    the epoch's noise), their labels, and T(quality) on the true class (1 for 0-1 labels)."""
    ds = synthetic(120, 10)
    cache = DistortionCache(ds.train_x)
    e = epoch_batches(cache, ds, STRATEGIES[9], seed=2, epoch=1, batch_size=40)
    np.testing.assert_array_equal(e.ids, batch_order(120, 2, 1))
    np.testing.assert_array_equal(np.sort(e.ids), np.arange(120))  # every image once
    x = torch.cat([b[0] for b in e]).numpy()
    y = torch.cat([b[1] for b in e]).numpy()
    t = torch.cat([b[2] for b in e]).numpy()
    np.testing.assert_array_equal(y, ds.train_y[e.ids])
    for j, i in enumerate(e.ids):
        lvl = e.plan.level[i]
        if lvl == 0:
            np.testing.assert_array_equal(x[j], ds.train_x[i])
            assert t[j] == 1 and e.scores[j] == 1
        else:
            kind = KINDS[e.plan.kind[i]]
            ref, s = iq.distort_and_score(ds.train_x[i:i + 1], kind, int(lvl), seed=e.plan.noise_seed, ids=[i])
            np.testing.assert_array_equal(x[j], ref[0])
            assert t[j] == pytest.approx(float(s[0]), abs=1e-6) and t[j] < 1
    zero_one = epoch_batches(cache, ds, STRATEGIES[8], seed=2, epoch=1, batch_size=40)
    assert torch.cat([b[2] for b in zero_one]).eq(1).all()  # 0-1 labels: the same images, full targets
    np.testing.assert_array_equal(torch.cat([b[0] for b in zero_one]).numpy(), x)


def test_rank_shares_make_up_the_single_process_batches():
    """Under torchrun each rank's step b is every size-th image of the single process's step b."""
    ds = synthetic(210, 10)
    cache = DistortionCache(ds.train_x)
    kw = dict(seed=1, epoch=2, batch_size=60, transform="identity")
    whole = list(epoch_batches(cache, ds, STRATEGIES[9], **kw))
    shares = [list(epoch_batches(cache, ds, STRATEGIES[9], rank=r, size=3, **kw)) for r in range(3)]
    assert [len(s) for s in shares] == [len(whole)] * 3 == [4] * 3
    for b, (x, y, t) in enumerate(whole):
        for r in range(3):
            xr, yr, tr = shares[r][b]
            torch.testing.assert_close(xr, x[r::3], rtol=0, atol=0)
            torch.testing.assert_close(yr, y[r::3], rtol=0, atol=0)
            torch.testing.assert_close(tr, t[r::3], rtol=0, atol=0)
    # the epoch's mean quality per (kind, level): the ranks' sums add up to the whole epoch's
    one = epoch_batches(cache, ds, STRATEGIES[9], **kw)
    total = sum(epoch_batches(cache, ds, STRATEGIES[9], rank=r, size=3, **kw).quality_sums() for r in range(3))
    torch.testing.assert_close(total, one.quality_sums(), rtol=1e-12, atol=1e-9)
    means = mean_quality(total)
    assert set(means) == {f"{k}{lvl}" for k, lvl in KIND_LEVELS}
    for key, m in means.items():
        k, lvl = key[:-1], int(key[-1])
        sel = (one.plan.kind[one.ids] == KINDS.index(k)) & (one.plan.level[one.ids] == lvl)
        assert m == pytest.approx(float(one.scores[sel].astype(np.float64).mean()), rel=1e-12)


def test_epoch_batches_reject_scores_outside_0_1():
    ds = synthetic(40, 10)

    class Broken(DistortionCache):
        def get(self, kind, level, idx, seed):
            x, s = super().get(kind, level, idx, seed)
            return x, s + 2

    with pytest.raises(RuntimeError, match="epoch 4: a quality score outside"):
        epoch_batches(Broken(ds.train_x), ds, STRATEGIES[9], seed=0, epoch=3, batch_size=10)


def test_train_consumes_epoch_batches(tmp_path, monkeypatch):
    """The (images, labels, targets) every step of train() receives are epoch_batches', in order."""
    seen = []
    make_step = T.make_step

    def recording(*a, **k):
        step = make_step(*a, **k)

        def wrapped(x, y, t):
            seen.append((x.clone(), y.clone(), t.clone()))
            return step(x, y, t)

        return wrapped

    monkeypatch.setattr(T, "make_step", recording)
    ds = synthetic(300, 60)
    cfg = T.TrainConfig(strategy=9, data="synthetic", epochs=2, train_subset=130, seed=3, batch_size=50,
                        transform="power:0.5", out=str(tmp_path / "r"))
    T.train(cfg, dataset=ds, progress=False)
    sub = ds.subset(130, 3)
    cache = training_cache(sub.train_x, torch.device("cpu"))
    want = [b for epoch in (0, 1) for b in epoch_batches(cache, sub, STRATEGIES[9], seed=3, epoch=epoch, batch_size=50,
                                                         transform="power:0.5")]
    assert len(seen) == 2 * 3
    _same_batches(seen, want)
