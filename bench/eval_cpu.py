"""`iqals-fast eval` on CPU, side by side in one run: today's evaluation against the new default and bf16.

Three ways to evaluate one trained run on the 25 test sets (Table 2's ten, the fifteen CIFAR-10-C
severities) of real CIFAR-10 test images:
  today     the evaluation as it was before the speed work (commit 94b0a18), reproduced here by
            :func:`today_eval`: batch 1,000 under ``torch.no_grad``, the outputs concatenated and copied to
            float64, Table 2's sets through ``DistortionCache`` (an indexed copy of each blur/JPEG set) and
            the three CIFAR-10-C sets that equal Table 2's distorted again, every set hashed to find them
  fp32      ``iqals_fast.evaluate.evaluate`` as it is now at batch 250, ``precision="fp32"`` (exact)
  checked   the same, ``precision="checked"``: bf16, the close calls redone in fp32 (the default on a CPU
            with native bf16: its accuracies must equal fp32's)
  bf16      the same, ``precision="bf16"`` (the CNN under bf16 autocast)
  (--extra) ``<precision>-<batch>``, e.g. ``fp32-1000``: the new evaluation at another batch (what the batch
            alone is worth on this machine)
Each is timed from loading the checkpoint to eval.json written (the distortions, the predictions and
the metrics; the data are decoded once, before), each measurement in a fresh Python process (the
allocator setting of iqals_fast/_alloc.py is process-wide and today's evaluation did not have it),
in ``--rounds`` interleaved rounds (the order reversed every other round). Reported: seconds and
images/s (25 sets x N images / seconds) of the best and the median round, the prediction rate
(distinct images predicted / prediction seconds), and each one's ratio to today's. fp32's
eval.json sections (results, corruptions, pooled) must equal today's exactly; checked's and bf16's
agreement with fp32 is counted per set (predictions that differ, accuracy difference).

    python bench/eval_cpu.py --data ../shared/data/cifar10-jpeg.tar.gz --out bench/results/eval-cpu-amd-epyc-2c
    python bench/eval_cpu.py --data ../shared/data/cifar10-jpeg.tar.gz --extra fp32-1000 bf16-1000   # + batch 1,000
    python bench/eval_cpu.py --data ../shared/data/cifar10-jpeg.tar.gz --test-subset 300 --rounds 1 --no-write

``--run``: a trained run directory (config.json and checkpoint.pt; copied, never written); default the
committed medium-protocol run of strategy 1. Writes ``OUT.json`` (everything) and ``OUT.md`` (the tables);
``--out`` defaults to ``bench/results/eval-<machine>`` (the machine as bench/contenders.py names it).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from contenders import RESULTS, machine, machine_label

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN = ROOT / "results" / "medium" / "runs" / "strategy1-seed0"  # checkpoint not committed: --run
VARIANTS = ("today", "fp32", "checked", "bf16")
"""The variants measured by default; ``--extra fp32-1000 bf16-1000 ...`` adds ``<precision>-<batch>`` ones."""
TODAY_BATCH = 1000


# -- today's evaluation, as it was (iqals_fast/evaluate.py at 94b0a18) ----------------------------------------


@torch.no_grad()
def today_predict_log_probs(model, images: np.ndarray, device, batch: int = TODAY_BATCH) -> np.ndarray:
    from iqals_fast.model import standardize

    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).to(device)
        out.append(torch.log_softmax(model(standardize(x)).float(), 1).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def today_sets(ds, backend: str = "auto") -> tuple[dict, dict]:
    """Table 2's sets and the CIFAR-10-C ones, each computed as today's test_sets / corruption_sets did."""
    from iqals_fast.config import CORRUPTIONS, SEVERITIES, TEST_NOISE_SEED, TEST_SETS, test_set_name
    from iqals_fast.data.mixture import DistortionCache
    from iqals_fast.ops.api import distort_and_score

    cache = DistortionCache(ds.test_x, backend=backend)
    idx = np.arange(len(ds.test_y))
    t2 = {"pristine": (ds.test_x, np.ones(len(idx), np.float32))}
    for kind, lvl in TEST_SETS[1:]:
        t2[test_set_name(kind, lvl)] = cache.get(kind, lvl, idx, TEST_NOISE_SEED)
    ids = np.arange(len(ds.test_y), dtype=np.int64)
    corr = {f"{name}-{sev}": distort_and_score(ds.test_x, kind, param=p, seed=TEST_NOISE_SEED, ids=ids,
                                               backend=backend)
            for name, (kind, params) in CORRUPTIONS.items() for sev, p in zip(SEVERITIES, params)}
    return t2, corr


def today_suite(model, sets, labels, device, memo: dict, record: dict, timing: dict) -> tuple[dict, dict]:
    from iqals_fast.metrics import classification_metrics

    results, pool_conf, pool_ssim = {}, [], []
    for name, (x, s) in sets.items():
        t = time.perf_counter()
        key = hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).hexdigest()
        if key not in memo:
            memo[key] = today_predict_log_probs(model, x, device)
        lp = memo[key]
        t1 = time.perf_counter()
        record[name] = lp
        results[name] = classification_metrics(lp, labels, s)
        pool_conf.append(np.exp(lp[np.arange(len(labels)), labels]))
        pool_ssim.append(np.asarray(s, np.float64))
        timing["predict"] += t1 - t
        timing["metrics"] += time.perf_counter() - t1
    return results, {"conf": np.concatenate(pool_conf), "ssim": np.concatenate(pool_ssim)}


def today_eval(run: Path, ds, record: dict, device: str = "cpu") -> dict:
    """Today's ``evaluate(run, dataset=ds)`` (suite all): its sections, timing and the log-probabilities."""
    from iqals_fast._io import save_json
    from iqals_fast.data.sources import sha256_file
    from iqals_fast.evaluate import _rho
    from iqals_fast.runs import CHECKPOINT, EVAL, load_trained, versions

    timing = {"distort": 0.0, "predict": 0.0, "metrics": 0.0}
    sha = sha256_file(run / CHECKPOINT)
    model, cfg, state = load_trained(run, device)
    model = model.to(memory_format=torch.channels_last)
    out, pools, memo = {"checkpoint": {"epoch": state["epoch"], "sha256": sha}}, {}, {}
    t = time.perf_counter()
    t2, corr = today_sets(ds)
    timing["distort"] = time.perf_counter() - t
    out["results"], pools["table2"] = today_suite(model, t2, ds.test_y, device, memo, record, timing)
    out["corruptions"], pools["corruptions"] = today_suite(model, corr, ds.test_y, device, memo, record, timing)
    out["pooled"] = {k: {"spearman_true_conf_ssim": _rho(p), "n": int(len(p["conf"]))} for k, p in pools.items()}
    both = {k: np.concatenate([pools["table2"][k], pools["corruptions"][k]]) for k in ("conf", "ssim")}
    out["pooled"]["all"] = {"spearman_true_conf_ssim": _rho(both), "n": int(len(both["conf"]))}
    out["versions"], out["timing"] = versions(), timing
    save_json(run / EVAL, out)
    return out


# -- one measurement (a child process) -------------------------------------------------------------------------


def new_eval(run: Path, ds, record: dict, precision: str, batch: int) -> dict:
    """``evaluate`` as it is now, its log-probabilities recorded on the way (a reference kept per set)."""
    from iqals_fast import evaluate as ev

    real = ev.predict_log_probs

    def recorded(model, x, device, batch, precision):
        lp = real(model, x, device, batch, precision)
        record[len(record)] = lp
        return lp

    ev.predict_log_probs = recorded
    try:
        return ev.evaluate(run, dataset=ds, precision=precision, batch=batch)
    finally:
        ev.predict_log_probs = real


def one(variant: str, run: Path, data: str, test_subset: int | None, out: Path, threads: int | None) -> None:
    """Time one variant on a fresh copy of ``run``; write its seconds, eval.json sections and predictions."""
    from iqals_fast.data.sources import load

    if threads:
        torch.set_num_threads(threads)
    ds = load(data).test_subset(test_subset)
    with tempfile.TemporaryDirectory() as tmp:
        r = Path(tmp) / run.name
        r.mkdir()
        for f in ("config.json", "checkpoint.pt"):
            shutil.copy2(run / f, r / f)
        record: dict = {}
        t, c = time.perf_counter(), _cpu_seconds()
        res = today_eval(r, ds, record) if variant == "today" else new_eval(r, ds, record, *variant_options(variant))
        seconds, cpu = time.perf_counter() - t, _cpu_seconds() - c
    names = [*res["results"], *res["corruptions"]]
    preds = _per_set_log_probs(variant, record, names)
    np.savez(out.with_suffix(".npz"), **preds)
    out.write_text(json.dumps({"variant": variant, "seconds": seconds, "cpu_seconds": cpu, "timing": res["timing"],
                               "precision": res.get("precision", "fp32"), "batch": res.get("batch", TODAY_BATCH),
                               "n_test": int(len(ds.test_y)), "sets": len(names), "predicted": len(record),
                               "threads": torch.get_num_threads(),
                               **{k: res[k] for k in ("results", "corruptions", "pooled")}}))


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads (with seconds: how contended a round was)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def variant_options(variant: str) -> tuple[str, int]:
    """(precision, batch) of a new-evaluation variant: ``default``, ``bf16`` (at the default batch), ``fp32-N``,
    ``bf16-N``."""
    from iqals_fast.inference import EVAL_BATCH, EVAL_PRECISIONS

    if variant in EVAL_PRECISIONS:
        return variant, EVAL_BATCH
    precision, _, batch = variant.partition("-")
    if precision not in EVAL_PRECISIONS or not batch.isdigit() or int(batch) < 1:
        raise SystemExit(f"--extra: {variant!r} is not <precision>-<batch> (precision one of {', '.join(EVAL_PRECISIONS)})")
    return precision, int(batch)


def _per_set_log_probs(variant: str, record: dict, names: list[str]) -> dict:
    """Set name -> log-probabilities (float32 for the comparison; today's recorded by name, the new evaluation's
    in prediction order: the distinct sets, each the first name of its (kind, parameter))."""
    if variant == "today":
        return {n: record[n].astype(np.float32) for n in names}
    from iqals_fast.evaluate import SET_SPECS

    first = list(dict.fromkeys(SET_SPECS[n] for n in names))
    by_spec = dict(zip(first, record.values()))
    return {n: by_spec[SET_SPECS[n]].astype(np.float32) for n in names}


# -- the parent: rounds, comparison, report ----------------------------------------------------------------------


def measure(args) -> dict:
    variants = (*VARIANTS, *args.extra)
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    preds = {}
    try:
        for i in range(args.rounds):
            for v in (variants if i % 2 == 0 else variants[::-1]):
                f = work / f"{v}-{i}.json"
                cmd = [sys.executable, __file__, "--one", v, "--run", str(args.run), "--data", args.data, "--json", str(f)]
                if args.test_subset:
                    cmd += ["--test-subset", str(args.test_subset)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                subprocess.run(cmd, check=True)
                m = json.loads(f.read_text())
                rounds[v].append(m)
                if v not in preds:
                    preds[v] = dict(np.load(f.with_suffix(".npz")))
                print(f"round {i + 1}/{args.rounds} {v}: {m['seconds']:.1f} s ({m['cpu_seconds']:.1f} CPU s; "
                      f"distort {m['timing']['distort']:.1f}, predict {m['timing']['predict']:.1f}, "
                      f"metrics {m['timing']['metrics']:.2f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarise(rounds, preds, args)


def summarise(rounds: dict, preds: dict, args) -> dict:
    from iqals_fast.runs import versions

    first = rounds["today"][0]
    n, sets = first["n_test"], first["sets"]
    rows = {}
    for v, ms in rounds.items():
        secs = [m["seconds"] for m in ms]
        pred = [m["timing"]["predict"] for m in ms]
        rows[v] = {"precision": ms[0]["precision"], "batch": ms[0]["batch"], "seconds": secs,
                   "cpu_seconds": [m["cpu_seconds"] for m in ms],
                   "seconds_best": min(secs), "seconds_median": statistics.median(secs),
                   "images_per_s_best": sets * n / min(secs), "images_per_s_median": sets * n / statistics.median(secs),
                   "predicted_images": ms[0]["predicted"] * n,
                   "predict_images_per_s_best": ms[0]["predicted"] * n / min(pred),
                   "timing_best_round": ms[secs.index(min(secs))]["timing"]}
    for r in rows.values():
        r["vs_today_best"] = rows["today"]["seconds_best"] / r["seconds_best"]
        r["vs_today_median"] = rows["today"]["seconds_median"] / r["seconds_median"]
    same = {k: first[k] == rounds["fp32"][0][k] for k in ("results", "corruptions", "pooled")}
    same_lp = all(np.array_equal(preds["today"][s], preds["fp32"][s]) for s in preds["today"])
    from iqals_fast.inference import default_eval_precision
    return {"what": "iqals-fast eval on the 25 test sets, side by side", "command": " ".join(sys.argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "run": str(args.run),
            "data": args.data, "n_test": n, "sets": sets, "rounds": args.rounds,
            "threads": first["threads"], "logical_cores": os.cpu_count(),
            "load_average_before": args.load_before, "machine": versions(), "variants": rows,
            "default": default_eval_precision("cpu"), "fp32_equals_today": {**same, "log_probs": same_lp},
            "vs_fp32": {v: agreement(rounds["fp32"][0], rounds[v][0], preds["fp32"], preds[v]) for v in ("checked", "bf16")}}


def agreement(fp32: dict, bf16: dict, p32: dict, p16: dict) -> dict:
    per_set = {}
    for part in ("results", "corruptions"):
        for s, r in fp32[part].items():
            a, b = p32[s].argmax(1), p16[s].argmax(1)
            per_set[s] = {"accuracy_fp32": r["accuracy"], "accuracy_other": bf16[part][s]["accuracy"],
                          "accuracy_difference": bf16[part][s]["accuracy"] - r["accuracy"],
                          "predictions_differing": int((a != b).sum()),
                          "max_abs_log_prob_difference": float(np.abs(p32[s] - p16[s]).max())}
    diffs = [abs(v["accuracy_difference"]) for v in per_set.values()]
    return {"per_set": per_set, "sets_with_equal_accuracy": sum(d == 0 for d in diffs),
            "max_abs_accuracy_difference": max(diffs),
            "predictions_differing_total": sum(v["predictions_differing"] for v in per_set.values())}


def markdown(res: dict) -> str:
    m, v = res["machine"], res["variants"]
    lines = [f"`iqals-fast eval` on the 25 test sets ({res['n_test']:,} images each), {m['processor']} "
             f"({res['threads']} threads of {res['logical_cores']} logical cores), torch {m['torch']}", "",
             "| evaluation | precision | batch | seconds (best / median) | images/s (best) | prediction images/s | "
             "distort s | predict s | metrics s | vs today (best / median) |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"today": "today (before)", "fp32": "fp32 (exact)", "checked": "checked", "bf16": "bf16"}
    names.update({k: f"new, {k}" for k in v if k not in names})
    names[res["default"]] = f"**{names[res['default']]} (the new default)**"
    for k, r in v.items():
        t = r["timing_best_round"]
        lines.append(f"| {names[k]} | {r['precision']} | {r['batch']} | {r['seconds_best']:.1f} / "
                     f"{r['seconds_median']:.1f} | {r['images_per_s_best']:,.0f} | {r['predict_images_per_s_best']:,.0f} | "
                     f"{t['distort']:.1f} | {t['predict']:.1f} | {t['metrics']:.2f} | {r['vs_today_best']:.2f}x / "
                     f"{r['vs_today_median']:.2f}x |")
    eq = res["fp32_equals_today"]
    lines += ["", f"fp32 (batch 250) vs today (batch 1,000): eval.json sections equal exactly: results {eq['results']}, "
              f"corruptions {eq['corruptions']}, pooled {eq['pooled']}; log-probabilities equal bit for bit: "
              f"{eq['log_probs']}."]
    for name, ag in res["vs_fp32"].items():
        lines += ["", f"{name} vs fp32: {ag['sets_with_equal_accuracy']} of {len(ag['per_set'])} sets with equal accuracy, "
                  f"at most {100 * ag['max_abs_accuracy_difference']:.2f} points apart; "
                  f"{ag['predictions_differing_total']:,} of {len(ag['per_set']) * res['n_test']:,} predictions differ."]
    lines += ["", "| set | accuracy fp32 | " + " | ".join(f"{k}: accuracy, difference (points), predictions differing, "
              "max abs log-prob diff" for k in res["vs_fp32"]) + " |", "|---|---|" + "---|" * len(res["vs_fp32"])]
    for s, r in res["vs_fp32"]["bf16"]["per_set"].items():
        cells = [f"{100 * a['per_set'][s]['accuracy_other']:.2f}, {100 * a['per_set'][s]['accuracy_difference']:+.2f}, "
                 f"{a['per_set'][s]['predictions_differing']}, {a['per_set'][s]['max_abs_log_prob_difference']:.4f}"
                 for a in res["vs_fp32"].values()]
        lines.append(f"| {s} | {100 * r['accuracy_fp32']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{res['command']}` ({res['date']}, load average {res['load_average_before']} before); "
              f"run `{res['run']}`; {res['rounds']} interleaved rounds, each measurement a fresh process; "
              "seconds from loading the checkpoint to eval.json written (data decoded before). "
              "images/s = 25 sets x images / seconds; prediction images/s = distinct images predicted "
              f"({v['fp32']['predicted_images']:,}: three CIFAR-10-C sets equal Table 2's) / prediction seconds.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the CIFAR-10 archive (e.g. ../shared/data/cifar10-jpeg.tar.gz)")
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help=f"a trained run (default {DEFAULT_RUN.relative_to(ROOT)})")
    p.add_argument("--out", type=Path, default=None,
                   help="OUT.json and OUT.md (default bench/results/eval-<machine>, e.g. eval-amd-epyc-2c)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--test-subset", type=int, default=None, help="a class-balanced N test images (quick check)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--extra", nargs="*", default=[], help="more variants, <precision>-<batch>: fp32-1000 bf16-500")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for v in args.extra:
        variant_options(v)
    if args.one:
        one(args.one, args.run, args.data, args.test_subset, args.json, args.threads)
        return 0
    for f in ("config.json", "checkpoint.pt"):
        if not (args.run / f).is_file():
            p.error(f"--run {args.run}: no {f} (a trained run directory is needed)")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    args.load_before = round(os.getloadavg()[0], 2)
    res = measure(args)
    md = markdown(res)
    print(md)
    if not args.no_write:
        args.out = args.out or RESULTS / f"eval-{machine_label(machine())}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(md)
        print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
