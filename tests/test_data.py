"""Data sources: the loaders, the decode cache, the decoders (PIL; DALI's CPU operator) and their errors.
(The epoch mixture is tests/test_mixture.py.)"""

import io
import pickle

import numpy as np
import pytest
from conftest import to_tar
from PIL import Image

from iqals_fast.data import sources
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


def test_test_subset_is_class_balanced_and_fixed():
    ds = synthetic(100, 200)
    t = ds.test_subset(50)
    assert np.bincount(t.test_y, minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(t.test_x, ds.test_subset(50).test_x)
    assert ds.test_subset(None) is ds
    with pytest.raises(DataError, match="--test-subset"):
        ds.test_subset(0)


# ----------------------------------------------------------------------------------------------
# Decoders. Observed agreement of DALI's CPU operator (nvidia-dali-cuda120 2.4, libjpeg-turbo and
# libpng inside) with PIL: bit-exact, max |difference| 0, on RGB and grayscale PNG, on baseline JPEG
# at several qualities, and on the real CIFAR-10 JPEGs of the shared archive.


def _jpeg(arr, quality=75):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_mixed_folders(root, gen, classes=("cat", "dog", "emu"), n=(6, 3)):
    """Class folders holding PNG (RGB and grayscale) and JPEG files of one size."""
    for split, k in zip(("train", "test"), n):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i, im in enumerate(gen(k, 12, 10, seed=ci * 10 + k)):
                if i % 3 == 0:
                    (d / f"{i:03d}.png").write_bytes(_png(im))
                elif i % 3 == 1:
                    (d / f"{i:03d}.png").write_bytes(_png(im[..., 0]))  # grayscale: decoded to RGB
                else:
                    (d / f"{i:03d}.jpg").write_bytes(_jpeg(im, quality=40 + 10 * ci))
    return root


def test_unknown_decoder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="decoder must be one of pil, dali, dali-mixed"):
        load("synthetic", decoder="opencv")


def test_dali_cpu_decoder_equals_pil_bit_for_bit(tmp_path, gen):
    pytest.importorskip("nvidia.dali")
    root = make_mixed_folders(tmp_path / "d", gen)
    pil = load(root, cache=False)
    arc = to_tar(root, tmp_path / "d.tar.gz")
    for spec, checksum in ((root, pil.checksum), (arc, sources.sha256_file(arc))):
        dali = load(spec, cache=False, decoder="dali")
        np.testing.assert_array_equal(dali.train_x, pil.train_x)  # max |difference| 0
        np.testing.assert_array_equal(dali.test_x, pil.test_x)
        np.testing.assert_array_equal(dali.train_y, pil.train_y)
        assert dali.classes == pil.classes and dali.checksum == checksum  # the source's checksum, whatever decodes it


def test_each_decoder_has_its_own_cache_and_pil_keeps_its_name(tmp_path, gen, monkeypatch):
    pytest.importorskip("nvidia.dali")
    arc = to_tar(make_mixed_folders(tmp_path / "d", gen), tmp_path / "d.tar.gz")
    cache = tmp_path / "cache"
    a = load(arc)
    assert [p.name for p in cache.iterdir()] == [f"decoded-v1-{a.checksum[:32]}.npz"]  # PIL's cache as it was
    pil_bytes = (cache / f"decoded-v1-{a.checksum[:32]}.npz").read_bytes()
    b = load(arc, decoder="dali")
    assert sorted(p.name for p in cache.iterdir()) == sorted([f"decoded-v1-{a.checksum[:32]}.npz",
                                                               f"decoded-v1-{a.checksum[:32]}-dali.npz"])
    assert (cache / f"decoded-v1-{a.checksum[:32]}.npz").read_bytes() == pil_bytes
    monkeypatch.setattr(sources, "_decode_dali", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    c = load(arc, decoder="dali")
    np.testing.assert_array_equal(c.train_x, b.train_x)
    np.testing.assert_array_equal(b.train_x, a.train_x)


def test_dali_decoder_errors_name_the_culprit(tmp_path, gen):
    pytest.importorskip("nvidia.dali")
    root = make_folders(tmp_path / "d", gen, corrupt="train/dog/bad.png")
    for spec in (root, to_tar(root, tmp_path / "d.tar.gz")):
        with pytest.raises(DataError, match=r"corrupt or unreadable image .*train/dog/bad.png"):
            load(spec, decoder="dali")
    with pytest.raises(DataError, match=r"class folder test/emu/ is empty"):
        load(make_folders(tmp_path / "e", gen, empty=("test", "emu")), decoder="dali")


def test_dali_decoder_spans_several_batches(tmp_path, gen, monkeypatch):
    pytest.importorskip("nvidia.dali")
    monkeypatch.setattr(sources, "DALI_BATCH", 4)  # 6 train images per class: a full and a partial batch
    root = make_mixed_folders(tmp_path / "d", gen)
    np.testing.assert_array_equal(load(root, cache=False, decoder="dali").train_x, load(root, cache=False).train_x)


@pytest.mark.data
def test_dali_cpu_decoder_equals_pil_on_real_cifar_jpegs(tmp_path):
    """The shared archive's JPEGs (the first 30 test images of each class): DALI's CPU decode = PIL's."""
    import tarfile

    from conftest import ARCHIVE

    pytest.importorskip("nvidia.dali")
    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 archive not found at {ARCHIVE}")
    root, taken = tmp_path / "real", {}
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] == "test" and parts[-1].endswith(".jpg"):
                if taken.setdefault(parts[-2], 0) < 30:
                    taken[parts[-2]] += 1
                    for split in ("train", "test"):
                        (root / split / parts[-2]).mkdir(parents=True, exist_ok=True)
                        (root / split / parts[-2] / parts[-1]).write_bytes(tar.extractfile(m).read())
    pil = load(root, cache=False)
    dali = load(root, cache=False, decoder="dali")
    assert len(pil.train_y) == 300
    np.testing.assert_array_equal(dali.train_x, pil.train_x)  # bit-exact


def test_dali_mixed_decoder_is_close_to_pil(tmp_path, gen):
    """nvJPEG on a GPU ("mixed"): approximate for JPEG (IDCT and upsampling differ), exact for PNG."""
    pytest.importorskip("nvidia.dali")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU"):
            load(make_mixed_folders(tmp_path / "d", gen), cache=False, decoder="dali-mixed")
        pytest.skip("decoder 'dali-mixed' needs a CUDA GPU")
    root = make_mixed_folders(tmp_path / "d", gen)
    pil, gpu = load(root, cache=False), load(root, cache=False, decoder="dali-mixed")
    diff = np.abs(gpu.train_x.astype(int) - pil.train_x)
    assert diff.max() <= 8 and diff.mean() < 1.0, (diff.max(), diff.mean())
