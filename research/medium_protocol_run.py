"""Strategy 1, seed 0, full CIFAR-10 archive, lr 0.1 x0.1 at E/3 and 2E/3: the run that fixes the
`medium` protocol. Trains one epoch at a time through train(..., stop_after=1) and, after each,
records the pristine test accuracy and the mean true-class confidence on 10,000 training images."""
import sys

# (run from a source copy while the package is edited: drop the editable finder so the copy is imported)
if "--from-copy" in sys.argv:
    sys.argv.remove("--from-copy")
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import json  # noqa: E401,E402
import time
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from iqals_fast.data.sources import load  # noqa: E402
from iqals_fast.evaluate import predict  # noqa: E402
from iqals_fast.runs import load_checkpoint, load_model  # noqa: E402
from iqals_fast.train import TrainConfig, train  # noqa: E402

data, out, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
ds = load(data)
cfg = TrainConfig(strategy=1, data=data, epochs=epochs, seed=0, lr_step_epochs=epochs // 3, out=str(out))
log = out.parent / (out.name + "-curve.jsonl")
rng = np.random.default_rng(0)
probe = rng.choice(len(ds.train_y), 10000, replace=False)
while True:
    ck = out / "checkpoint.pt"
    done = load_checkpoint(ck)["epoch"] if ck.is_file() else 0
    if done >= epochs:
        break
    train(cfg, resume=ck.is_file(), dataset=ds, progress=False, stop_after=1)
    model, _ = load_model(out)
    model = model.to(memory_format=torch.channels_last)
    t = time.time()
    p_test = predict(model, ds.test_x, "cpu", 250)
    p_tr = predict(model, ds.train_x[probe], "cpu", 250)
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    rec.update(test_acc=float((p_test.argmax(1) == ds.test_y).mean()),
               train_conf_true=float(p_tr[np.arange(len(probe)), ds.train_y[probe]].mean()),
               train_acc_probe_eval=float((p_tr.argmax(1) == ds.train_y[probe]).mean()), eval_seconds=time.time() - t)
    with open(log, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
