"""Test sets and what is measured on them.

Suites (``config.SUITES``; the sets and their parameters are defined in ``config.py``):

- ``table2``: the ten test sets of Table 2: pristine, and blur / noise / JPEG at the paper's levels 1-3.
- ``corruptions``: the CIFAR-10-C severities 1-5 of Hendrycks and Dietterich (ICLR 2019, the
  parameters of their ``make_cifar_c.py``) for the three corruptions our own ops compute:
  Gaussian noise sigma .04 .06 .08 .09 .10 on the [0, 1] scale (our ``noise`` takes the variance,
  sigma^2), Gaussian blur sigma .4 .6 .7 .8 1.0 (skimage's ``gaussian``, as theirs) and JPEG quality
  80 65 58 50 40 (PIL, as theirs). One difference: CIFAR-10-C truncates to uint8, we round.
  The other twelve CIFAR-10-C corruptions are not computed: no maintained package computes them
  with CIFAR-10-C's parameters (see README).

On every test set: accuracy, ECE (15 bins), NLL, Brier score, mean confidence in the predicted
and in the true class, the Spearman correlation between true-class confidence and each image's
SSIM (``None`` on the pristine set, where SSIM is constant), and per-bin sums for reliability
diagrams and the confidence-against-SSIM figure (``iqals_fast/metrics.py``); on Table 2's sets also
which images the run got right (``correct``, packed bits), for paired comparisons of runs. Pooled over each
suite (and over both), the Spearman correlation of the (image, test set) pairs.

Distortions of the test set are fixed: blur and JPEG are deterministic and the noise is keyed by
``TEST_NOISE_SEED`` and each test image's index, so every run is tested on the same images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ._alloc import keep_freed_memory
from ._io import save_json
from .config import (
    CORRUPTION_SETS,
    CORRUPTIONS,
    DEFAULT_SUITE,
    FIG4_CLASSES,
    FIG4_SIGMAS,
    KINDS,
    LEVELS,
    SEVERITIES,
    SUITES,
    TEST_NOISE_SEED,
    TEST_SET_NAMES,
    TEST_SETS,
    test_set_name,
)
from .data.sources import Dataset, load, sha256_file
from .inference import (  # noqa: F401  (predict, predict_log_probs: public here too)
    EVAL_BATCH,
    MIN_ROWS,
    amp_dtype,
    check_batch,
    check_precision,
    default_eval_precision,
    predict,
    predict_log_probs,
)
from .metrics import classification_metrics, pack_correct, spearman
from .ops.api import distort, distort_and_score
from .runs import CHECKPOINT, EVAL, RunError, check_device, data_spec, load_trained, versions

EVAL_VERSION = 2
"""eval.json layout: 1 = accuracy and mean true-class confidence on Table 2's sets; 2 = the
calibration metrics on every set and the corruptions suite (since then also ``n_test`` and
``checkpoint``: what a later evaluation of one suite checks before it keeps the other's results)."""


def test_sets(ds: Dataset, backend: str = "auto", bar=None, memo: dict | None = None
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (uint8 images, SSIM scores) for the ten test sets (``bar``: a tqdm bar, one step a set;
    ``memo``: see :func:`distorted`)."""
    out = {"pristine": (ds.test_x, np.ones(len(ds.test_y), np.float32))}
    for name in TEST_SET_NAMES[1:]:
        _named(bar, f"distort {name}")
        out[name] = distorted(ds.test_x, *SET_SPECS[name], backend, memo)
        _done(bar)
    return out


def corruption_sets(ds: Dataset, backend: str = "auto", bar=None, memo: dict | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``"<corruption>-<severity>"`` -> (uint8 images, SSIM scores) for the CIFAR-10-C severities."""
    out = {}
    for name in CORRUPTION_SETS:
        _named(bar, f"distort {name}")
        out[name] = distorted(ds.test_x, *SET_SPECS[name], backend, memo)
        _done(bar)
    return out


SET_SPECS: dict[str, tuple[str, object]] = {
    "pristine": ("pristine", None),
    **{test_set_name(k, lvl): (k, LEVELS.param(k, lvl)) for k, lvl in TEST_SETS[1:]},
    **{f"{c}-{sev}": (k, p) for c, (k, ps) in CORRUPTIONS.items() for sev, p in zip(SEVERITIES, ps)},
}
"""Every test set's (kind, parameter). Equal specs are the same images: CIFAR-10-C's blur 0.7 and 1.0 and
noise 0.01 are Table 2's blur1, blur2 and noise2."""


def figure4_picks(ds: Dataset) -> list[int]:
    """Figure 4's test images: the first of each class in ``FIG4_CLASSES`` that the test set holds."""
    return [int(np.flatnonzero(ds.test_y == c)[0]) for c in FIG4_CLASSES if (ds.test_y == c).any()]


def figure4_confidence(model, ds: Dataset, device="cpu") -> dict:
    """Figure 4's numbers (eval.json's ``figure4``): ``model``'s confidence in the true class (fp32) of the
    ``figure4_picks`` test images, blurred at each of ``FIG4_SIGMAS`` (0: pristine); ``confidence`` images x
    sigmas. Recorded at evaluation, so that the figure redraws without the checkpoint."""
    picks = figure4_picks(ds)
    if not picks:
        return {"picks": [], "sigmas": list(FIG4_SIGMAS), "confidence": []}
    imgs, ys = ds.test_x[picks], ds.test_y[picks]
    conf = []
    for sg in FIG4_SIGMAS:
        x = imgs if sg == 0 else distort(imgs, "blur", param=float(sg))
        conf.append(predict(model, x, device)[np.arange(len(ys)), ys])
    conf = np.stack(conf, 1).astype(np.float64).round(6)
    return {"picks": picks, "sigmas": list(FIG4_SIGMAS), "confidence": conf.tolist()}


def distorted(images: np.ndarray, kind: str, param, backend: str = "auto", memo: dict | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (the test images) distorted by ``kind`` at ``param``, and their SSIM scores. Noise is keyed
    by ``TEST_NOISE_SEED`` and each image's index; blur and JPEG are deterministic. ``memo``: a dict the
    caller keeps for these same images; a set asked for again with it is not recomputed."""
    key = (kind, param, backend)
    if memo is not None and key in memo:
        return memo[key]
    ids = np.arange(len(images), dtype=np.int64)
    res = distort_and_score(images, kind, param=param, seed=TEST_NOISE_SEED, ids=ids, backend=backend)
    if memo is not None:
        memo[key] = res
    return res


def _named(bar, what: str) -> None:
    """Show on a progress bar (or None) what it is doing now."""
    if bar is not None:
        bar.set_postfix_str(what, refresh=False)


def _done(bar) -> None:
    if bar is not None:
        bar.update(1)


def _suite(model, sets, labels, device, memo: dict, bar=None, *, batch: int, precision: str,
           timing: dict, keep_correct: bool = False) -> tuple[dict, dict]:
    results, pool_conf, pool_ssim = {}, [], []
    for name, (x, s) in sets.items():
        _named(bar, f"test {name}")
        key = SET_SPECS.get(name, name)  # sets of one spec are the same images: predicted once
        t = time.perf_counter()
        if key not in memo:
            memo[key] = predict_log_probs(model, x, device, batch, precision)
        lp = memo[key]
        t1 = time.perf_counter()
        results[name] = classification_metrics(lp, labels, s)
        if keep_correct:  # which images it got right: paired comparisons of two runs (report.label_effects)
            results[name]["correct"] = pack_correct(lp.argmax(1) == np.asarray(labels))
        pool_conf.append(np.exp(lp[np.arange(len(labels)), labels]))
        pool_ssim.append(np.asarray(s, np.float64))
        timing["predict"] += t1 - t
        timing["metrics"] += time.perf_counter() - t1
        _done(bar)
    return results, {"conf": np.concatenate(pool_conf), "ssim": np.concatenate(pool_ssim)}


def _content_key(x: np.ndarray) -> tuple:
    """What identifies test images: their shape and a hash of their bytes."""
    return x.shape, hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).hexdigest()


def _rho(pool) -> float | None:
    r = spearman(pool["conf"], pool["ssim"])
    return None if np.isnan(r) else r


def _read_eval(run: Path) -> dict | None:
    """``RUN/eval.json``, or None where it is missing or unreadable."""
    p = Path(run) / EVAL
    try:
        e = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        print(f"note: {p} is unreadable: taken as missing")
        return None
    return e if isinstance(e, dict) else None


def needs_eval(run: Path, suite: str = "all") -> bool:
    """True when ``RUN/eval.json`` is missing or lacks what ``suite`` measures (an older layout)."""
    e = _read_eval(run)
    if e is None:
        return True
    if e.get("eval_version", 1) < EVAL_VERSION:
        return True
    return suite in ("corruptions", "all") and not e.get("corruptions")


def _n_test(e: dict) -> int | None:
    return e.get("n_test", e.get("results", {}).get("pristine", {}).get("n"))


def _why_not_mergeable(old: dict, ds: Dataset, checkpoint: dict, precision: str) -> str | None:
    """Why the sections of an earlier eval.json cannot stand beside a new evaluation's (None: they can):
    another layout, other test images (checksum and number: the same data under another path are the same),
    another checkpoint, another precision (an eval.json without one was measured in fp32)."""
    if old.get("eval_version", 1) < EVAL_VERSION:
        return "in an older layout"
    if old.get("precision", "fp32") != precision:
        return f"in {old.get('precision', 'fp32')} (now {precision})"
    if old.get("test_checksum") != ds.checksum or _n_test(old) != len(ds.test_y):
        return (f"on other test data ({old.get('test_data')}: checksum {str(old.get('test_checksum'))[:16]}, "
                f"{_n_test(old)} images; now {ds.checksum[:16]}, {len(ds.test_y)} images)")
    was = old.get("checkpoint")
    if was is not None and was.get("sha256") != checkpoint["sha256"]:
        return f"on another checkpoint (epoch {was.get('epoch')}; now epoch {checkpoint['epoch']})"
    return None


def check_compatible(ds: Dataset, cfg: dict, run: Path) -> None:
    """Test data must have the run's classes, in its order, and its image size (RunError naming both)."""
    d = cfg["dataset"]
    if list(ds.classes) != list(d["classes"]):
        def show(c):
            return ", ".join(map(str, c[:6])) + (", ..." if len(c) > 6 else "") + f" ({len(c)})"
        raise RunError(f"{ds.source}: its classes ({show(list(ds.classes))}) are not those {run} was trained on "
                       f"({show(list(d['classes']))}): evaluate on data with the run's classes")
    size = int(d.get("image_size", 32))
    if ds.test_x.ndim != 4 or tuple(ds.test_x.shape[1:]) != (size, size, 3):
        raise RunError(f"{ds.source}: its test images are {' x '.join(map(str, ds.test_x.shape[1:]))}, but {run} "
                       f"was trained on {size} x {size} x 3 images")


def evaluate(run: Path, *, data: str | None = None, device: str = "cpu", backend: str = "auto",
             dataset: Dataset | None = None, sets=None, corruptions=None, test_subset: int | None = None,
             suite: str = DEFAULT_SUITE, progress: bool = False, precision: str | None = None,
             batch: int = EVAL_BATCH, memo: dict | None = None) -> dict:
    """Test a trained run on ``suite``'s test sets; writes ``RUN/eval.json`` atomically.

    ``suite``: ``table2``, ``corruptions`` or ``all``. Evaluating one suite keeps the other's results
    already in eval.json when they were measured on the same test images (checksum and number, whatever
    path named them) and the same checkpoint, in the current layout; ``corruptions`` also evaluates Table
    2's sets when eval.json lacks them (corruption errors need the clean accuracy). An evaluation never
    drops results it does not recompute: where the earlier ones cannot be kept it is refused (``--suite
    all`` replaces everything). Test data of other classes or image size than the run's are refused.
    ``data``: the test data (default: the run's training data, by the path config.json records, resolved
    when the run was trained). ``test_subset`` keeps a class-balanced N of the
    test images (Table 2 proper uses the whole test set). ``sets`` / ``corruptions`` pass
    precomputed test sets (name -> (images, SSIM)), to share them between runs; or ``memo``: a dict kept
    between calls, in which the test sets this call distorts are kept for the next on the same test images.
    ``progress``: a bar over the sets distorted and tested (on stderr). ``precision``: ``fp32`` (exact), ``bf16``
    (the network under bf16 autocast: faster on CPU, not the same predictions) or ``checked`` (bf16, with
    the close calls redone in fp32: fp32's predictions and accuracies, inference.CHECK_MARGIN); None: ``checked``
    on a CPU with native bf16, else ``fp32`` (inference.default_eval_precision); ``batch``: images
    a forward pass (fp32 outputs do not depend on it). eval.json records both, and the seconds spent
    distorting, predicting and on the metrics (``timing``).
    """
    if suite not in SUITES:
        raise ValueError(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    precision = check_precision(default_eval_precision(check_device(device)) if precision is None else precision)
    check_batch(batch)
    keep_freed_memory()  # the batches' buffers reused, not mapped and faulted in again (iqals_fast/_alloc.py)
    run = Path(run)
    t0 = time.perf_counter()
    sha = sha256_file(run / CHECKPOINT) if (run / CHECKPOINT).is_file() else None
    model, cfg, state = load_trained(run, device)
    checkpoint = {"epoch": state["epoch"], "sha256": sha}
    # the standardised NHWC images are channels-last already: so made the weights (same logits, ~1.9x on CPU)
    model = model.to(memory_format=torch.channels_last)
    ds = dataset if dataset is not None else load(data or data_spec(cfg))
    ds = ds.test_subset(test_subset)
    check_compatible(ds, cfg, run)
    if ds.checksum != cfg["dataset"]["checksum"]:
        print(f"note: evaluating on {ds.source}, not the training data's source {cfg['dataset']['source']}")
    old = (_read_eval(run) or {}) if suite != "all" else {}
    why = _why_not_mergeable(old, ds, checkpoint, precision) if old else None
    if why:  # (a corruptions-only evaluation then recomputes Table 2's sets too: nothing is lost)
        if suite == "table2" and old.get("corruptions"):
            raise RunError(f"{run / EVAL} holds corruptions results measured {why}; --suite table2 would replace it "
                           "without them: pass --suite all to re-evaluate everything on these data")
        old = {}
    out = {"run": str(run), "strategy": cfg["strategy"], "strategy_name": cfg["strategy_name"],
           "seed": cfg["seed"], "iqa": cfg.get("iqa", "ssim"), "eval_version": EVAL_VERSION, "test_data": ds.source,
           "test_checksum": ds.checksum, "n_test": int(len(ds.test_y)), "checkpoint": checkpoint,
           "test_noise_seed": TEST_NOISE_SEED, "precision": precision, "batch": batch,
           "levels": {k: list(getattr(LEVELS, k)) for k in KINDS},
           "corruption_params": {c: {"kind": k, "params": list(p)} for c, (k, p) in CORRUPTIONS.items()},
           "results": old.get("results", {}), "corruptions": old.get("corruptions", {}),
           "pooled": dict(old.get("pooled", {}))}
    pools, predicted, timing = {}, {}, {"distort": 0.0, "predict": 0.0, "metrics": 0.0}
    images = {} if memo is None else memo.setdefault(_content_key(ds.test_x), {})
    do_table2 = suite in ("table2", "all") or not out["results"]
    do_corr = suite in ("corruptions", "all")
    steps = (do_table2 * (len(TEST_SETS) + (len(TEST_SETS) - 1) * (sets is None))
             + do_corr * (len(CORRUPTION_SETS) * (1 + (corruptions is None))))
    with tqdm(total=steps, desc=f"eval {run.name}", unit="set", disable=not progress, dynamic_ncols=True) as bar:
        run_suite = functools.partial(_suite, model, labels=ds.test_y, device=device, memo=predicted, bar=bar,
                                      batch=batch, precision=precision, timing=timing)
        if do_table2:
            t = time.perf_counter()
            s = sets if sets is not None else test_sets(ds, backend, bar, images)
            timing["distort"] += time.perf_counter() - t
            out["results"], pools["table2"] = run_suite(s, keep_correct=True)
        if do_corr:
            t = time.perf_counter()
            c = corruptions if corruptions is not None else corruption_sets(ds, backend, bar, images)
            timing["distort"] += time.perf_counter() - t
            out["corruptions"], pools["corruptions"] = run_suite(c)
    for k, pool in pools.items():
        out["pooled"][k] = {"spearman_true_conf_ssim": _rho(pool), "n": int(len(pool["conf"]))}
    if len(pools) == 2:
        both = {k: np.concatenate([pools["table2"][k], pools["corruptions"][k]]) for k in ("conf", "ssim")}
        out["pooled"]["all"] = {"spearman_true_conf_ssim": _rho(both), "n": int(len(both["conf"]))}
    out["figure4"] = figure4_confidence(model, ds, device)
    out["versions"] = versions()
    out["seconds"] = time.perf_counter() - t0
    out["timing"] = timing
    save_json(run / EVAL, out)
    return out
