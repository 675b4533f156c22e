"""Does bf16 change what a run learns? Strategies 1 and 9, seeds 0 and 1, trained in bf16 under the `small`
protocol (config.PROTOCOLS["small"]: 8,000 training images, 10 epochs, lr x0.1 at epoch 7) on the real archive,
evaluated like the committed fp32 runs of results/runs/ (Table 2's ten sets, the class-balanced 5,000-image
test subset, fp32 evaluation), and compared with them per seed and against their seed spread.

    python research/precision/bf16_vs_fp32.py ../shared/data/cifar10-jpeg.tar.gz results/precision
"""
import json
import sys
from pathlib import Path

from iqals_fast.config import PROTOCOLS, TEST_SET_NAMES
from iqals_fast.data.sources import load
from iqals_fast.evaluate import evaluate
from iqals_fast.runs import EVAL, finished
from iqals_fast.train import TrainConfig, train

data, out = sys.argv[1], Path(sys.argv[2])
p = PROTOCOLS["small"]
ds = load(data)
pairs = [(1, 0), (9, 0), (1, 1), (9, 1)]
for s, seed in pairs:
    run = out / f"strategy{s}-seed{seed}-bf16"
    if not finished(run, p.epochs):
        train(TrainConfig(strategy=s, data=data, epochs=p.epochs, train_subset=p.train_subset, seed=seed,
                          lr_step_epochs=p.lr_step_epochs, out=str(run), precision="bf16"),
              dataset=ds, progress=False, resume=(run / "checkpoint.pt").is_file())
    if not (run / EVAL).is_file():
        evaluate(run, dataset=ds, test_subset=p.test_subset, suite="table2", precision="fp32")

acc = {}
for s, seed in pairs:
    runs = (("bf16", out / f"strategy{s}-seed{seed}-bf16"), ("fp32", Path("results/runs") / f"strategy{s}-seed{seed}"))
    for prec, run in runs:
        r = json.loads((run / EVAL).read_text())["results"]
        acc[(s, seed, prec)] = {t: 100 * r[t]["accuracy"] for t in TEST_SET_NAMES}
lines = ["| strategy | test set | fp32 seed 0 | fp32 seed 1 | fp32 seed spread | bf16 seed 0 | bf16 seed 1 | "
         "bf16 mean - fp32 mean |", "|---|---|---:|---:|---:|---:|---:|---:|"]
summary = {}
for s in (1, 9):
    for t in TEST_SET_NAMES:
        f = [acc[(s, k, "fp32")][t] for k in (0, 1)]
        b = [acc[(s, k, "bf16")][t] for k in (0, 1)]
        d = sum(b) / 2 - sum(f) / 2
        summary[f"{s}/{t}"] = {"fp32": f, "bf16": b, "fp32_spread": abs(f[0] - f[1]), "difference_of_means": d}
        lines.append(f"| {s} | {t} | {f[0]:.2f} | {f[1]:.2f} | {abs(f[0] - f[1]):.2f} | {b[0]:.2f} | {b[1]:.2f} "
                     f"| {d:+.2f} |")
within = sum(abs(v["difference_of_means"]) <= max(v["fp32_spread"], 1.4) for v in summary.values())
lines += ["", f"{within} of {len(summary)} cells: |bf16 mean - fp32 mean| within the fp32 seed spread or "
          "twice the binomial standard error of a difference of two 2-seed means on 5,000 images (2 x 0.70 = 1.4 "
          "points at 55%)."]
(out / "bf16-vs-fp32.json").write_text(json.dumps(summary, indent=1) + "\n")
(out / "bf16-vs-fp32.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
