"""Data sources, the decode cache, their errors, and the epoch mixture."""

import io
import pickle

import numpy as np
import pytest
from conftest import to_tar
from PIL import Image

from iqals_fast.config import KINDS
from iqals_fast.data import sources
from iqals_fast.data.mixture import DistortionCache, counts, epoch_data, epoch_plan, noise_seed
from iqals_fast.data.sources import DataError, load, synthetic


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_folders(root, gen, classes=("cat", "dog", "emu"), n=(4, 2), corrupt=None, empty=None):
    for split, k in zip(("train", "test"), n):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            if (split, c) == empty:
                continue
            for i, im in enumerate(gen(k, 12, 10, seed=ci * 10 + k)):
                (d / f"{i:03d}.png").write_bytes(_png(im))
    if corrupt:
        (root / corrupt).write_bytes(b"not an image at all")
    return root


def test_class_folders_directory_and_archive(tmp_path, gen):
    root = make_folders(tmp_path / "d", gen)
    ds = load(root)
    assert ds.classes == ("cat", "dog", "emu") and ds.train_x.shape == (12, 12, 10, 3) and ds.test_x.shape == (6, 12, 10, 3)
    np.testing.assert_array_equal(ds.train_y, [0] * 4 + [1] * 4 + [2] * 4)
    first = np.asarray(Image.open(root / "train" / "cat" / "000.png"))
    np.testing.assert_array_equal(ds.train_x[0], first)  # lossless PNG, decoded exactly
    ds2 = load(to_tar(root, tmp_path / "d.tar.gz"))
    np.testing.assert_array_equal(ds2.train_x, ds.train_x)
    np.testing.assert_array_equal(ds2.test_y, ds.test_y)


def test_cache_means_no_second_decode(tmp_path, gen, monkeypatch):
    arc = to_tar(make_folders(tmp_path / "d", gen), tmp_path / "d.tar.gz")
    a = load(arc)
    monkeypatch.setattr(sources, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    b = load(arc)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert b.classes == a.classes and b.checksum == a.checksum


def test_cifar_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    raw = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, 7))
        raw[name] = (data, labels)
        (d / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    ds = load(d)
    assert ds.train_x.shape == (35, 32, 32, 3) and ds.test_x.shape == (7, 32, 32, 3) and ds.classes[0] == "airplane"
    # CIFAR rows are 1024 R, then 1024 G, then 1024 B, row-major
    data, labels = raw["data_batch_2"]
    np.testing.assert_array_equal(ds.train_x[7, 1, 2], data[0, [32 + 2, 1024 + 32 + 2, 2048 + 32 + 2]])
    assert ds.train_y[7] == labels[0]
    ds2 = load(to_tar(d, tmp_path / "c.tar.gz"))
    np.testing.assert_array_equal(ds2.test_x, ds.test_x)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"corrupt": "train/dog/bad.png"}, r"corrupt or unreadable image .*train/dog/bad.png"),
        ({"empty": ("test", "emu")}, r"class folder test/emu/ is empty"),
    ],
)
def test_folder_errors_name_the_culprit(tmp_path, gen, kwargs, msg):
    root = make_folders(tmp_path / "d", gen, **kwargs)
    with pytest.raises(DataError, match=msg):
        load(root)
    with pytest.raises(DataError, match=msg):
        load(to_tar(root, tmp_path / "d.tar.gz"))


def test_layout_errors(tmp_path, gen):
    root = make_folders(tmp_path / "d", gen)
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=r"missing split folder 'test/'"):
        load(to_tar(root, tmp_path / "a.tar.gz"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="wrong layout"):
        load(tmp_path / "other")
    with pytest.raises(DataError, match="not found.*'synthetic'"):
        load(tmp_path / "nope")
    (tmp_path / "x.tar.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a tar archive"):
        load(tmp_path / "x.tar.gz")
    d = tmp_path / "batches"
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"missing \['data_batch_2'"):
        load(d)


def test_official_archive_offline_error_names_the_options(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources.urllib.request, "urlretrieve", fail)
    with pytest.raises(DataError, match="Offline.*--data.*synthetic"):
        load("cifar10")


def test_synthetic_is_deterministic_and_balanced():
    a, b = synthetic(200, 50), synthetic(200, 50)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert np.bincount(a.train_y).tolist() == [20] * 10 and a.train_x.dtype == np.uint8


def test_subset_is_class_balanced_and_reproducible():
    ds = synthetic(500, 20)
    s = ds.subset(100, seed=3)
    assert len(s.train_y) == 100 and np.bincount(s.train_y).tolist() == [10] * 10
    np.testing.assert_array_equal(s.train_x, ds.subset(100, seed=3).train_x)


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
    import iqals_fast as iq

    ref = iq.distort(x[i:i + 1], KINDS[plan.kind[i]], 2, seed=plan.noise_seed, ids=[i])
    np.testing.assert_array_equal(y[i:i + 1], ref)


def test_test_subset_is_class_balanced_and_fixed():
    ds = synthetic(100, 200)
    t = ds.test_subset(50)
    assert np.bincount(t.test_y, minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(t.test_x, ds.test_subset(50).test_x)
    assert ds.test_subset(None) is ds
    with pytest.raises(DataError, match="--test-subset"):
        ds.test_subset(0)


def test_epoch_data_on_torch_images_equals_numpy(tmp_path, monkeypatch):
    """The cache on torch images (how train keeps them on a GPU) gives the numpy path's images and scores."""
    import torch

    from iqals_fast.data.mixture import DistortionCache, epoch_data, epoch_plan
    from iqals_fast.data.sources import synthetic

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
