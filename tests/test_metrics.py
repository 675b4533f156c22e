"""Calibration and confidence metrics against hand-computed values, scipy and torch."""

import numpy as np
import pytest
import scipy.stats
import torch

from iqals_fast.metrics import (
    ECE_BINS,
    bin_index,
    brier,
    classification_metrics,
    ece,
    nll,
    pack_correct,
    rankdata,
    spearman,
    unpack_correct,
)


def test_ece_on_a_constructed_example():
    # 4 images, 3 classes. Top-class confidences 0.9, 0.9, 0.6, 0.5 (labels make 1 of the first
    # two and both of the last two correct). With 15 bins (b/15, (b+1)/15]:
    #   0.9 -> bin 13 (0.867, 0.933]: mean confidence 0.9, accuracy 1/2 -> gap 0.4, weight 2/4
    #   0.6 -> bin 8 (0.533, 0.6]: confidence 0.6, accuracy 1 -> gap 0.4, weight 1/4
    #   0.5 -> bin 7 (0.467, 0.533]: confidence 0.5, accuracy 1 -> gap 0.5, weight 1/4
    # ECE = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.5 = 0.425
    p = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    y = np.array([0, 0, 0, 2])
    assert bin_index(np.array([0.9, 0.6, 0.5]), ECE_BINS).tolist() == [13, 8, 7]
    assert ece(p, y) == pytest.approx(0.425, abs=1e-12)
    # one bin: ECE = |accuracy - mean confidence|
    assert ece(p, y, bins=1) == pytest.approx(abs(0.75 - (0.9 + 0.9 + 0.6 + 0.5) / 4), abs=1e-12)


def test_ece_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2000, 10))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 10, 2000)
    conf, correct = p.max(1), p.argmax(1) == y
    ref = 0.0
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):  # Guo et al.'s bins: lo < conf <= hi
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs(correct[m].mean() - conf[m].mean())
    assert ece(p, y) == pytest.approx(ref, abs=1e-12)


def test_nll_and_brier():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 3, (500, 10)))
    y = torch.from_numpy(rng.integers(0, 10, 500))
    lp = torch.log_softmax(logits, 1).numpy()
    assert nll(lp, y.numpy()) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-12)
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    # (0.7-1)^2 + 0.2^2 + 0.1^2 = 0.14; 0.1^2 + (0.1-1)^2 + 0.8^2 = 1.46
    assert brier(p, np.array([0, 1])) == pytest.approx((0.14 + 1.46) / 2, abs=1e-12)
    assert brier(np.eye(3), np.arange(3)) == 0.0


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties):
    rng = np.random.default_rng(2)
    a = rng.normal(size=3000)
    b = a + rng.normal(size=3000)
    if ties:  # SSIM of pristine images is exactly 1; confidences repeat in float32
        a = np.round(a, 1)
        b[:500] = 1.0
    np.testing.assert_allclose(rankdata(a), scipy.stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, -b) == pytest.approx(-spearman(a, b), abs=1e-12)


def test_spearman_undefined_for_a_constant():
    assert np.isnan(spearman(np.ones(10), np.arange(10)))
    assert np.isnan(spearman(np.ones(1), np.ones(1)))


def test_classification_metrics_record():
    rng = np.random.default_rng(3)
    lp = torch.log_softmax(torch.from_numpy(rng.normal(0, 2, (400, 10))), 1).numpy()
    y = rng.integers(0, 10, 400)
    s = rng.uniform(0.3, 1, 400)
    m = classification_metrics(lp, y, s)
    p = np.exp(lp)
    assert m["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert m["ece"] == pytest.approx(ece(p, y), abs=1e-12)
    assert m["brier"] == pytest.approx(brier(p, y), abs=1e-12)
    assert m["spearman_true_conf_ssim"] == pytest.approx(scipy.stats.spearmanr(p[np.arange(400), y], s).statistic)
    assert sum(m["reliability"]["count"]) == sum(m["by_ssim"]["count"]) == m["n"] == 400
    assert sum(m["by_ssim"]["correct"]) == int(np.sum(p.argmax(1) == y))
    assert m["mean_confidence"] >= m["mean_true_class_confidence"]
    assert classification_metrics(lp, y, np.ones(400))["spearman_true_conf_ssim"] is None


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 10_000])
def test_pack_correct_round_trips_and_refuses_the_wrong_length(n):
    c = np.random.default_rng(n).random(n) < 0.7
    text = pack_correct(c)
    assert isinstance(text, str) and len(text) == 4 * -(-((n + 7) // 8) // 3)
    np.testing.assert_array_equal(unpack_correct(text, n), c)
    with pytest.raises(ValueError, match="does not hold"):
        unpack_correct(text, n + 8)
    if n % 8:  # padding bits set: the text is not one of n predictions
        with pytest.raises(ValueError, match="does not hold"):
            unpack_correct(pack_correct(np.ones(n + 1, bool)), n) if (n + 1) % 8 else unpack_correct(
                pack_correct(np.ones(n, bool)), n - 1)
    with pytest.raises(ValueError, match="not a packed vector"):
        unpack_correct("not base64!", n)
    with pytest.raises(ValueError, match="1-d boolean"):
        pack_correct(c.astype(np.int8))
