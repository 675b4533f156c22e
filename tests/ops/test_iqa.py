"""IQA measures for IQA-LS (iqals_fast/ops/iqa.py): parity with piq and scikit-image, the maps T into
(0, 1], and ``--iqa`` end to end in training (torch reference code only: no backend to run over).

piq's package ``__init__`` imports torchvision (for its deep-feature metrics), and torchvision's
wheel either forces another torch or fails to load against the CPU build here. Its GMSD, PSNR and
MS-SSIM modules need torch only, so where ``import piq`` fails on torchvision they are loaded
without the package ``__init__``. Install piq with ``pip install --no-deps piq`` (see README).
"""

import importlib
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

import iqals_fast as iq
from iqals_fast.cli import main
from iqals_fast.data.mixture import DistortionCache
from iqals_fast.data.sources import synthetic
from iqals_fast.evaluate import evaluate
from iqals_fast.ops.iqa import (
    IQA_MEASURES,
    MS_SSIM_SMALL_SIGMA,
    MS_SSIM_SMALL_WEIGHTS,
    MS_SSIM_SMALL_WINDOW,
    PSNR_CEILING_DB,
    iqa_measure,
    iqa_quality,
    quality_from_measure,
)
from iqals_fast.runs import RunError
from iqals_fast.train import TrainConfig, train


@pytest.fixture(scope="module")
def piq():
    """piq's gmsd, psnr and ms_ssim modules (namespace with those three), or skip if piq is absent."""
    try:
        import piq as mod

        return types.SimpleNamespace(gmsd=mod.gmsd, psnr=mod.psnr, multi_scale_ssim=mod.multi_scale_ssim)
    except ModuleNotFoundError as e:
        if e.name == "piq" or importlib.util.find_spec("piq") is None:
            pytest.skip("piq is not installed (pip install --no-deps piq)")
    except (ImportError, RuntimeError):  # torchvision missing or built for another torch
        pass
    spec = importlib.util.find_spec("piq")
    saved = {k: v for k, v in sys.modules.items() if k == "piq" or k.startswith("piq.")}
    for k in saved:
        del sys.modules[k]
    pkg = types.ModuleType("piq")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["piq"] = pkg
    try:
        g, p, m = (importlib.import_module(f"piq.{n}") for n in ("gmsd", "psnr", "ms_ssim"))
    finally:
        for k in [k for k in sys.modules if k == "piq" or k.startswith("piq.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return types.SimpleNamespace(gmsd=g.gmsd, psnr=p.psnr, multi_scale_ssim=m.multi_scale_ssim)


def _pairs(gen, n=12):
    x = gen(n, 32, 32, seed=5)
    return [(x, iq.distort(x, kind, param=p, seed=3)) for kind, p in
            (("blur", 0.7), ("blur", 1.2), ("noise", 0.005), ("noise", 0.02), ("jpeg", 12), ("jpeg", 4))]


def _nchw(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0


def test_gmsd_matches_piq(piq, gen):
    for x, y in _pairs(gen):
        ours = iqa_measure(x, y, "gmsd")
        ref = piq.gmsd(_nchw(x), _nchw(y), reduction="none", data_range=1.0).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
        assert (ours > 0).all()


def test_ms_ssim_small_matches_piq(piq, gen):
    w = torch.tensor(MS_SSIM_SMALL_WEIGHTS)
    for x, y in _pairs(gen):
        ours = iqa_measure(x, y, "ms-ssim-small")
        ref = piq.multi_scale_ssim(_nchw(x), _nchw(y), kernel_size=MS_SSIM_SMALL_WINDOW, kernel_sigma=MS_SSIM_SMALL_SIGMA,
                                   scale_weights=w, reduction="none", data_range=1.0).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5)


def test_psnr_matches_piq_and_skimage(piq, gen):
    for x, y in _pairs(gen):
        ours = iqa_measure(x, y, "psnr")
        sk = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(x, y)]
        np.testing.assert_allclose(ours, sk, rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours, piq.psnr(_nchw(x), _nchw(y), reduction="none").numpy(), rtol=0, atol=1e-3)


def test_psnr_matches_skimage_without_piq(gen):
    x, y = _pairs(gen)[2]
    np.testing.assert_allclose(iqa_measure(x, y, "psnr"), [peak_signal_noise_ratio(a, b, data_range=255)
                                                           for a, b in zip(x, y)], rtol=0, atol=1e-4)


@pytest.mark.data
def test_parity_on_real_images(piq, real_images):
    x = real_images[:64]
    for kind, p in (("blur", 1.0), ("noise", 0.01), ("jpeg", 8)):
        y = iq.distort(x, kind, param=p, seed=1)
        np.testing.assert_allclose(iqa_measure(x, y, "gmsd"), piq.gmsd(_nchw(x), _nchw(y), reduction="none").numpy(),
                                   atol=2e-6)
        ref = piq.multi_scale_ssim(_nchw(x), _nchw(y), kernel_size=7, kernel_sigma=1.0,
                                   scale_weights=torch.tensor(MS_SSIM_SMALL_WEIGHTS), reduction="none").numpy()
        np.testing.assert_allclose(iqa_measure(x, y, "ms-ssim-small"), ref, atol=2e-5)


def test_ssim_is_the_fast_ssim(gen):
    x, y = _pairs(gen)[1]
    np.testing.assert_array_equal(iqa_measure(x, y, "ssim"), iq.ssim(x, y))
    np.testing.assert_array_equal(iqa_quality(x, y, "ssim"), iq.ssim(x, y))


def test_quality_maps_into_0_1_and_falls_with_level(gen):
    x = gen(16, 32, 32, seed=7)
    for m in IQA_MEASURES:
        q_same = iqa_quality(x, x, m)
        np.testing.assert_allclose(q_same, 1.0, atol=1e-6)
        for kind in ("blur", "noise", "jpeg"):
            qs = [iqa_quality(x, iq.distort(x, kind, lvl, seed=1), m).mean() for lvl in (1, 2, 3)]
            assert 0 < qs[2] < qs[1] < qs[0] < 1, (m, kind, qs)
    # the documented transforms, on raw values
    assert quality_from_measure(np.array([0.0, 0.25, 0.5]), "gmsd").tolist() == pytest.approx([1.0, 0.5, 1e-6])
    assert quality_from_measure(np.array([np.inf, PSNR_CEILING_DB, PSNR_CEILING_DB / 2]), "psnr").tolist() == \
        pytest.approx([1.0, 1.0, 0.5])
    assert quality_from_measure(torch.tensor([-0.1, 0.5]), "ms-ssim-small").tolist() == pytest.approx([1e-6, 0.5])


def test_input_checks(gen):
    x = gen(2, 32, 32)
    with pytest.raises(ValueError, match="unknown IQA measure"):
        iqa_measure(x, x, "vif")
    small = gen(2, 20, 20)
    with pytest.raises(ValueError, match="at least 25 x 25"):
        iqa_measure(small, small, "ms-ssim-small")
    with pytest.raises(ValueError, match="same shape"):
        iqa_measure(x, x[:1], "gmsd")
    t = torch.from_numpy(x)
    assert isinstance(iqa_quality(t, t, "psnr"), torch.Tensor)


def test_distortion_cache_scores_with_the_chosen_measure(gen):
    x = gen(20, 32, 32, seed=2)
    idx = np.arange(20)
    for m in IQA_MEASURES:
        c = DistortionCache(x, iqa=m)
        for kind in ("blur", "noise", "jpeg"):
            y, s = c.get(kind, 2, idx[5:], seed=9)
            ref_y = iq.distort(x[5:], kind, 2, seed=9, ids=idx[5:])
            np.testing.assert_array_equal(y, ref_y)
            np.testing.assert_allclose(s, iqa_quality(x[5:], ref_y, m), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown IQA measure"):
        DistortionCache(x, iqa="SSIM")


def test_train_with_another_iqa_measure_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))
    ds = synthetic(300, 60)

    def cfg(name, **kw):
        return TrainConfig(**{**dict(strategy=9, data="synthetic", epochs=1, train_subset=200, batch_size=50,
                                     out=str(tmp_path / name)), **kw})

    out = train(cfg("gmsd", iqa="gmsd"), dataset=ds, progress=False)
    assert json.loads((out / "config.json").read_text())["iqa"] == "gmsd"
    scores = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["mean_ssim"]
    train(cfg("ssim"), dataset=ds, progress=False)
    ssim_scores = json.loads((tmp_path / "ssim" / "metrics.jsonl").read_text().splitlines()[0])["mean_ssim"]
    assert scores.keys() == ssim_scores.keys()
    assert all(0 < v <= 1 for v in scores.values())
    assert any(abs(scores[k] - ssim_scores[k]) > 0.01 for k in scores)  # GMSD's q, not SSIM
    assert evaluate(out, dataset=ds, suite="table2")["iqa"] == "gmsd"
    with pytest.raises(RunError, match="iqa was 'gmsd', now 'psnr'"):
        train(cfg("gmsd", iqa="psnr", epochs=2), dataset=ds, progress=False, resume=True)


def test_cli_passes_iqa_to_training(monkeypatch, tmp_path):
    import iqals_fast.train as T

    seen = {}
    monkeypatch.setattr(T, "train", lambda cfg, **kw: seen.setdefault("cfg", cfg) and tmp_path)
    assert main(["train", "--strategy", "3", "--data", "synthetic", "--iqa", "ms-ssim-small", "--no-progress"]) == 0
    assert seen["cfg"].iqa == "ms-ssim-small" and seen["cfg"].strategy == 3


def test_iqa_option_rejects_unknown_measures(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--iqa", "vif", "--data", "synthetic"])
    assert "invalid choice: 'vif'" in capsys.readouterr().err
