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
            for i, im in enumerate(gen(k, 12, 12, seed=ci * 10 + k)):
                (d / f"{i:03d}.png").write_bytes(_png(im))
    if corrupt:
        (root / corrupt).write_bytes(b"not an image at all")
    return root


def test_class_folders_directory_and_archive(tmp_path, gen):
    root = make_folders(tmp_path / "d", gen)
    ds = load(root)
    assert ds.classes == ("cat", "dog", "emu") and ds.train_x.shape == (12, 12, 12, 3) and ds.test_x.shape == (6, 12, 12, 3)
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
            for i, im in enumerate(gen(k, 12, 12, seed=ci * 10 + k)):
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


# ----------------------------------------------------------------------------------------------
# Trust (issue 15): no code runs from a data file, bad data gets an error naming the file and what is wrong


def write_batches(d, protocol=pickle.DEFAULT_PROTOCOL, n=7, seed=0, edit=None):
    """CIFAR-10 python batches as the official archive holds them (a dict of bytes keys: uint8 N x 3072
    data, a list of int labels, bytes file names and batch label) in the folder d; ``edit(name, dict)``
    may change one before it is pickled. Returns {name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    raw = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        raw[name] = (data, labels)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        if edit is not None:
            edit(name, batch)
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return raw


class _PlantedCode:
    """A value whose unpickling would run code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar.gz"])
def test_a_crafted_batch_runs_no_code_and_the_error_names_file_and_class(tmp_path, packed):
    marker = tmp_path / "planted-code-ran"

    def plant(name, batch):
        if name == "data_batch_1":
            batch[b"data"] = _PlantedCode(marker)

    d = tmp_path / "cifar-10-batches-py"
    write_batches(d, edit=plant)
    if packed:
        spec, shown = to_tar(d, tmp_path / "c.tar.gz"), "c.tar.gz:imgs/data_batch_1"
    else:
        spec, shown = d, str(d / "data_batch_1")
    with pytest.raises(DataError, match="refused") as e:
        load(spec)
    assert shown in str(e.value) and "builtins.exec" in str(e.value), str(e.value)
    assert not marker.exists()  # the planted code did not run


@pytest.mark.parametrize("protocol", list(range(pickle.HIGHEST_PROTOCOL + 1)) + ["numpy1"])
def test_genuine_batches_load_at_every_pickle_protocol(tmp_path, protocol):
    """Every protocol, and a batch naming numpy 1.x's module numpy.core (as the official archive's do)."""
    d = tmp_path / "b"
    raw = write_batches(d, protocol=2 if protocol == "numpy1" else protocol)
    if protocol == "numpy1":
        for p in d.iterdir():
            p.write_bytes(p.read_bytes().replace(b"numpy._core", b"numpy.core"))
    ds = load(d, cache=False)
    np.testing.assert_array_equal(ds.test_y, raw["test_batch"][1])
    data = raw["data_batch_2"][0]
    np.testing.assert_array_equal(ds.train_x[7], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_out_of_range_labels_are_refused_naming_the_batch(tmp_path, bad):
    def edit(name, batch):
        if name == "data_batch_3":
            batch[b"labels"][4] = bad

    write_batches(tmp_path / "b", edit=edit)
    with pytest.raises(DataError, match=rf"data_batch_3: label {bad} \(image 4\) is outside 0..9"):
        load(tmp_path / "b")


def test_a_cache_written_before_the_checks_is_checked_again(tmp_path, capsys):
    """A decoded cache holding what the loaders now refuse (out-of-range labels, as an older version cached
    them) is not trusted: the source is decoded again, and refused with the batch named."""
    def edit(name, batch):
        if name == "data_batch_1":
            batch[b"labels"][0] = 10

    d = tmp_path / "b"
    raw = write_batches(d, edit=edit)
    x = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([raw[f"data_batch_{i}"][1] for i in range(1, 6)])
    checksum = sources._sha256_tree(d)
    old = sources.Dataset(x, y, x[:7], y[:7], sources.CIFAR10_CLASSES, str(d), checksum)
    sources._write_cache(sources._cache_path(checksum), old)
    with pytest.raises(DataError, match=r"data_batch_1: label 10 \(image 0\)"):
        load(d)
    assert "note: the decoded cache" in capsys.readouterr().out


@pytest.mark.parametrize(
    "data,msg",
    [
        (lambda x: x.astype(np.float64) / 255.0, r"data_batch_2: pixel data has dtype float64"),
        (lambda x: x.astype(np.float32), r"data_batch_2: pixel data has dtype float32"),
        (lambda x: x.astype(np.int16) + 200, r"data_batch_2: pixel values range over \[200, 4\d\d\]"),
        (lambda x: x.astype(np.int64) - 1, r"data_batch_2: pixel values range over \[-1, "),
    ],
    ids=["float64", "float32", "int16 above 255", "negative"],
)
def test_pixel_data_that_is_not_uint8_is_refused_naming_the_batch(tmp_path, data, msg):
    def edit(name, batch):
        if name == "data_batch_2":
            batch[b"data"] = data(batch[b"data"])

    write_batches(tmp_path / "b", edit=edit)
    with pytest.raises(DataError, match=msg):
        load(tmp_path / "b")


def test_integer_pixel_data_within_0_255_is_taken_exactly(tmp_path):
    def edit(name, batch):
        batch[b"data"] = batch[b"data"].astype(np.int64)

    raw = write_batches(tmp_path / "b", edit=edit)
    ds = load(tmp_path / "b", cache=False)
    np.testing.assert_array_equal(ds.test_x[3], raw["test_batch"][0][3].reshape(3, 32, 32).transpose(1, 2, 0))


def test_non_square_images_are_refused_with_their_shape(tmp_path, gen):
    root = tmp_path / "d"
    for split in ("train", "test"):
        for ci, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True)
            for i, im in enumerate(gen(2, 12, 10, seed=ci)):
                (root / split / c / f"{i:03d}.png").write_bytes(_png(im))
    for spec in (root, to_tar(root, tmp_path / "d.tar.gz")):
        with pytest.raises(DataError, match=r"train/cat/000.png: images are 12 x 10 pixels \(height x width\).*square"):
            load(spec)


@pytest.mark.parametrize("odd", ["train/dog/001.png", "test/emu/000.png"])
def test_an_image_of_another_size_is_named(tmp_path, gen, odd):
    """The odd one out is named, in train/ or in test/ (test images of another size than the training
    images loaded silently and crashed in evaluation)."""
    root = make_folders(tmp_path / "d", gen)
    (root / odd).write_bytes(_png(gen(1, 10, 10)[0]))
    for spec in (root, to_tar(root, tmp_path / "d.tar.gz")):
        with pytest.raises(DataError, match=rf"{odd} is 10 x 10 pixels, but .*train/cat/000.png is 12 x 12"):
            load(spec)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "other checksum"])
def test_a_damaged_decoded_cache_is_rebuilt_with_a_note(tmp_path, gen, capsys, damage):
    arc = to_tar(make_folders(tmp_path / "d", gen), tmp_path / "d.tar.gz")
    a = load(arc)
    (cached,) = (tmp_path / "cache").iterdir()
    good = cached.read_bytes()
    if damage == "other checksum":
        b = synthetic(20, 10)
        sources._write_cache(cached, b)
    else:
        cached.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "garbage": b"PK\x03\x04" + b"x" * 99}[damage])
    capsys.readouterr()
    b = load(arc)
    out = capsys.readouterr().out
    assert f"note: the decoded cache {cached} is unreadable" in out and "decoding" in out, out
    np.testing.assert_array_equal(b.train_x, a.train_x)
    np.testing.assert_array_equal(b.test_y, a.test_y)
    assert b.classes == a.classes and b.checksum == a.checksum
    c = load(arc)  # rewritten: read from the cache without a note
    assert "note" not in capsys.readouterr().out
    np.testing.assert_array_equal(c.train_x, a.train_x)


def test_train_subset_larger_than_the_data_says_so(capsys):
    ds = synthetic(200, 20)
    assert ds.subset(500) is ds
    out = capsys.readouterr().out
    assert "--train-subset 500 is more than the 200 training images" in out and "training on all 200" in out
    assert ds.subset(200) is ds and ds.subset(None) is ds and capsys.readouterr().out == ""
