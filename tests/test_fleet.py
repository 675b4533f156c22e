"""Fleets (iqals_fast/fleet.py): K runs trained as one grouped network end as the K runs trained alone, up to
float rounding, and leave the same run directories; the learning curve (``curve_every``) in metrics.jsonl."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from iqals_fast import fleet as fleet_mod
from iqals_fast.cli import main
from iqals_fast.data.sources import synthetic
from iqals_fast.evaluate import evaluate, predict
from iqals_fast.fleet import FleetCNN, FleetTrainer, lrn_grouped, train_fleet
from iqals_fast.model import PaperCNN, lrn_tf
from iqals_fast.report import table
from iqals_fast.reproduce import _train_fleets
from iqals_fast.runs import RunError, load_model
from iqals_fast.train import TrainConfig, train

DS = synthetic(300, 60)
PAIRS = ((1, 0), (2, 1), (9, 0))  # 0-1 labels on pristine images, 0-1 labels on MIX_blur, IQA-LS on MIX_all3
CURVE = (1, 3, 0)  # per run: every epoch; only the last (2 of 2); never
TIMING = {"seconds", "data_seconds", "images_per_s", "curve_seconds"}
CURVE_KEYS = {"test_acc", "train_conf_true", "train_acc_probe", "curve_seconds"}

# How close a fleet ends to its runs trained alone (2 epochs x 4 steps, fp32, 200 images). Measured on the 2-core
# Zen 5 over 7 runs (strategies 1-5, 7, 9; seeds 0-3): 5 runs within 1-2 ulp of weights of ~0.1 (7.5e-9, 1.5e-8), two
# at 1.75e-7 and 6.6e-7 (in conv1/conv2), the logged accuracies and SSIM means equal. Why not 0: oneDNN's grouped
# convolution and torch.baddbmm sum their products in another order than the plain convolution and linear layer
# (the forward differs by ~3e-8, test_fleet_cnn_equals_k_paper_cnns); that alone is the ulp-level difference. The
# larger ones are discrete: where two inputs of a max-pool window (or a ReLU input and 0) are within an ulp, the
# rounding can flip which one wins, and that one position's gradient goes elsewhere, moving a few weights by
# lr x one position's contribution (~1e-6) at that step. The bound is 7.5x the largest seen. A wrong fleet (run 1 fed
# run 0's labels) misses it by more than 3 orders of magnitude (8.3e-3, test_a_wrong_fleet_fails_the_bound): the
# bound tells rounding from a run that learned something else.
ATOL = 5e-6


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQALS_CACHE", str(tmp_path / "cache"))


def cfg(out, strategy, seed, **kw):
    base = dict(strategy=strategy, seed=seed, data="synthetic", epochs=2, train_subset=200, batch_size=50,
                precision="fp32", out=str(out))
    return TrainConfig(**{**base, **kw})


def cfgs(root, name, **kw):
    return [cfg(root / name / f"strategy{s}-seed{sd}", s, sd, curve_every=c, **kw) for (s, sd), c in zip(PAIRS, CURVE)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three runs trained alone by train(), and as one fleet."""
    root = tmp_path_factory.mktemp("fleet")
    alone = [train(c, dataset=DS, progress=False) for c in cfgs(root, "alone")]
    together = train_fleet(cfgs(root, "fleet"), dataset=DS, progress=False)
    return root, alone, together


def weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def max_diff(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- (c) the network -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [32, 13])  # 13: SAME pooling pads (-inf), odd sizes
def test_fleet_cnn_equals_k_paper_cnns(channels_last, size):
    k, n = 3, 5
    models = [PaperCNN(10, size, seed=s) for s in range(k)]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = [m.to(memory_format=fmt) for m in models]
    fleet = FleetCNN.stack(models).to(memory_format=fmt)
    assert fleet.k == k
    x = torch.randn(k, n, 3, size, size, generator=torch.Generator().manual_seed(1))
    out = fleet(x)
    ref = torch.stack([m(x[i]) for i, m in enumerate(models)])
    # float32 rounding of logits of ~0.1 (measured <= 7.5e-8): grouped conv / baddbmm sum in another order
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    (out.square().sum() + out[1, 0, 3]).backward()  # a loss that weighs the copies differently
    (ref.square().sum() + ref[1, 0, 3]).backward()
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        for t in ("weight", "bias"):
            got = getattr(getattr(fleet, name), t).grad
            want = [getattr(getattr(m, name), t).grad for m in models]
            want = (torch.cat(want) if name.startswith("conv") else
                    torch.stack([w.t() if t == "weight" else w for w in want]))  # fleet fc weights: K x in x out
            scale = want.abs().max().item()
            # relative to the gradient's scale: sums over N x H x W positions in another order (measured <= 2e-6)
            assert (got - want).abs().max().item() <= 1e-5 * scale, (name, t)


def test_stack_unstack_is_exact():
    models = [PaperCNN(10, 32, seed=s) for s in (3, 4)]
    back = FleetCNN.stack(models).unstack()
    for m, b in zip(models, back):
        assert m.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_lrn_grouped_is_the_lrn_of_each_group(channels_last, backend):
    k, c = 3, 64
    x = torch.randn(4, k * c, 6, 5)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    got = lrn_grouped(x, k, backend)
    want = torch.cat([lrn_tf(x[:, g * c:(g + 1) * c], backend) for g in range(k)], 1)
    assert torch.equal(got, want)  # the same kernel on the same numbers, only viewed differently


def test_the_whole_step_function_equals_the_plain_fleet_step():
    """``graph`` (on by default on CUDA) runs the fleet's step through step_graph.optimizer_step, the per-run losses
    and counts packed as its outputs; on CPU that function runs eagerly and must equal the plain step bit for bit
    (the fused SGD is torch.optim.SGD's arithmetic, autograd.grad the backward's), a partial last batch included."""
    from iqals_fast.ops import dispatch
    from iqals_fast.train import make_optimizer

    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 256, (3, n, 32, 32, 3), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (3, n), generator=g), torch.rand(3, n, generator=g)) for n in (8, 8, 5)]
    out = []
    for graph in (False, True):
        c = TrainConfig(precision="fp32", graph=graph)
        fleet = FleetCNN.stack([PaperCNN(seed=s).to(memory_format=torch.channels_last) for s in range(3)])
        fleet = fleet.to(memory_format=torch.channels_last)
        step = fleet_mod.make_fleet_step(fleet, make_optimizer(fleet, 0.1, 0.004), loss_fn, [c] * 3, torch.device("cpu"))
        logged = [step(*b) for b in batches]
        out.append((logged, fleet.state_dict()))
    (plain, wp), (graphed, wg) = out
    for (lp, cp), (lg, cg) in zip(plain, graphed):
        assert lp.shape == (3,) and torch.equal(lp, lg) and torch.equal(cp, cg) and cg.dtype == torch.int64
    assert all(torch.equal(wp[k], wg[k]) for k in wp)


# -- (a) a fleet ends as its runs alone ------------------------------------------------------------


def test_a_fleet_ends_with_the_weights_of_its_runs_alone(trained):
    _, alone, together = trained
    assert [r.name for r in together] == [f"strategy{s}-seed{sd}" for s, sd in PAIRS]
    for a, f in zip(alone, together):
        assert max_diff(a, f) <= ATOL, f.name
        ma, mf = metrics(a), metrics(f)
        for ra, rf in zip(ma, mf):
            assert rf["train_acc"] == ra["train_acc"] and rf["mean_ssim"] == ra["mean_ssim"]
            assert rf["loss"] == pytest.approx(ra["loss"], rel=1e-5)


def test_a_wrong_fleet_fails_the_bound(trained, tmp_path, monkeypatch):
    """The bound is not loose: feed run 1 run 0's labels (a bug a fleet could have) and it fails by far."""
    _, alone, _ = trained
    honest = FleetTrainer.batches

    def swapped(self, epoch):
        for images, labels, targets in honest(self, epoch):
            labels = labels.clone()
            labels[1] = labels[0]
            yield images, labels, targets

    monkeypatch.setattr(FleetTrainer, "batches", swapped)
    wrong = train_fleet(cfgs(tmp_path, "wrong"), dataset=DS, progress=False)
    assert max_diff(alone[1], wrong[1]) > 100 * ATOL  # measured 8.3e-3: the size of 8 SGD updates, not rounding
    assert max_diff(alone[0], wrong[0]) <= ATOL  # the other runs are untouched: every gradient is its run's own


# -- (b) the run directories are a single run's ----------------------------------------------------


def _shape(x):
    """The keys of a JSON value, recursively (what a reader of the file may look up)."""
    if isinstance(x, dict):
        return {k: _shape(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_shape(v) for v in x[:1]]
    return type(x).__name__


def test_b_fleet_runs_evaluate_and_report_like_single_runs(trained):
    root, alone, together = trained
    memo = {}  # the test sets, distorted once for all six runs
    for a, f in zip(alone, together):
        ca, cf = (json.loads((r / "config.json").read_text()) for r in (a, f))
        assert ca.keys() == cf.keys()
        assert {k: v for k, v in ca.items() if k not in ("out", "versions")} == \
            {k: v for k, v in cf.items() if k not in ("out", "versions")}
        sa, sf = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (a, f))
        assert sa.keys() == sf.keys() and sa["optimizer"] == sf["optimizer"] and sa["epoch"] == sf["epoch"]
        assert {k: v.shape for k, v in sa["model"].items()} == {k: v.shape for k, v in sf["model"].items()}
        assert [set(r) for r in sa["history"]] == [set(r) for r in sf["history"]] == [set(r) for r in metrics(f)]
        ea, ef = (evaluate(r, dataset=DS, progress=False, memo=memo) for r in (a, f))
        assert _shape(ea) == _shape(ef)
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in f.iterdir())
        assert ea["results"]["pristine"]["accuracy"] == ef["results"]["pristine"]["accuracy"]
    # weights within 5e-6: a prediction flips only on a near-tie of two logits within ~1e-6; none of the 600 does
    assert table(together, out_dir=root / "tf") == table(alone, out_dir=root / "ta")
    assert (root / "tf" / "table2.csv").read_text() == (root / "ta" / "table2.csv").read_text()


# -- (d) resume ------------------------------------------------------------------------------------


def test_d_an_interrupted_fleet_resumes_to_the_uninterrupted_one(trained, tmp_path):
    _, _, together = trained
    part = train_fleet(cfgs(tmp_path, "part"), dataset=DS, progress=False, stop_after=1)
    assert all(len(metrics(r)) == 1 for r in part)
    train_fleet(cfgs(tmp_path, "part"), dataset=DS, progress=False, resume=True)
    for a, b in zip(together, part):
        wa, wb = weights(a), weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same process, same threads: bit for bit
        strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in metrics(x)] for x in (a, b)]
        assert strip[0] == strip[1]


# -- (e) refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("option, change", [("--epochs", dict(epochs=3)), ("--batch-size", dict(batch_size=25)),
                                            ("--train-subset", dict(train_subset=100)),
                                            ("--lr-step-epochs", dict(lr_step_epochs=1)),
                                            ("--data", dict(data="elsewhere")), ("--precision", dict(precision="bf16")),
                                            ("--backend", dict(backend="torch"))])
def test_e_a_fleet_refuses_runs_that_differ_in_a_shared_option(tmp_path, option, change):
    runs = [cfg(tmp_path / "a", 1, 0), cfg(tmp_path / "b", 2, 0, **change)]
    with pytest.raises(ValueError, match=f"must share {option}:"):
        fleet_mod.check_fleet(runs)
    if option != "--data":  # (a --data that does not exist fails validation first, as a single run's would)
        with pytest.raises(ValueError, match=f"must share {option}:"):
            train_fleet(runs, dataset=DS, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_e_other_refusals(tmp_path):
    with pytest.raises(ValueError, match="same run directory"):
        fleet_mod.check_fleet([cfg(tmp_path / "x", 1, 0), cfg(tmp_path / "x", 2, 0)])
    with pytest.raises(ValueError, match="model 1 differs from model 0 in the shapes of fc1.weight"):
        FleetCNN.stack([PaperCNN(10, 32), PaperCNN(10, 24)])
    with pytest.raises(ValueError, match="fc3.weight, fc3.bias"):
        FleetCNN.stack([PaperCNN(10, 32), PaperCNN(5, 32)])
    with pytest.raises(ValueError, match="K x N x 3 x H x W images with K = 2"):
        FleetCNN.stack([PaperCNN(10, 32), PaperCNN(10, 32)])(torch.zeros(3, 1, 3, 32, 32))


def test_e_a_fleet_resumes_together_or_not_at_all(tmp_path):
    runs = [cfg(tmp_path / f"s{s}", s, 0, train_subset=100, epochs=3) for s in (1, 2)]
    train_fleet(runs, dataset=DS, progress=False, stop_after=1)
    train(runs[1], dataset=DS, progress=False, resume=True, stop_after=1)  # one run alone one epoch further
    with pytest.raises(RunError, match=r"different epochs: .*s1 at epoch 1, .*s2 at epoch 2"):
        train_fleet(runs, dataset=DS, progress=False, resume=True)
    assert len(metrics(tmp_path / "s1")) == 1 and len(metrics(tmp_path / "s2")) == 2  # nothing was trained
    # reproduce's way: one fleet per epoch the checkpoints are at (here two fleets of one), both to the end
    _train_fleets(runs, DS, SimpleNamespace(epochs=3), progress=False)
    assert [len(metrics(tmp_path / f"s{s}")) for s in (1, 2)] == [3, 3]


# -- (f) the command line --------------------------------------------------------------------------


def test_f_cli_trains_every_strategy_and_seed_as_a_fleet(tmp_path, capsys):
    out = tmp_path / "many"
    assert main(["train", "--strategy", "1", "2", "--seed", "0", "3", "--data", "synthetic", "--epochs", "1",
                 "--train-subset", "50", "--batch-size", "50", "--precision", "fp32", "--out", str(out),
                 "--no-progress"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["strategy1-seed0", "strategy1-seed3", "strategy2-seed0", "strategy2-seed3"]
    assert all((out / n / "checkpoint.pt").is_file() and (out / n / "config.json").is_file() for n in names)
    assert json.loads((out / "strategy2-seed3" / "config.json").read_text())["seed"] == 3
    assert "trained 4 runs as one fleet" in capsys.readouterr().out


# -- (g) the learning curve ------------------------------------------------------------------------


def test_g_the_curve_is_in_metrics_jsonl(trained):
    _, alone, together = trained
    for runs in (alone, together):
        rows = [metrics(r) for r in runs]
        assert [[CURVE_KEYS <= set(x) for x in r] for r in rows] == [[True, True], [False, True], [False, False]]
        assert not set(rows[1][0]) & CURVE_KEYS
    run = together[0]
    last = metrics(run)[-1]
    assert last["test_acc"] == evaluate(run, dataset=DS, progress=False)["results"]["pristine"]["accuracy"]
    model, _ = load_model(run)
    probe = np.random.default_rng(0).choice(200, 200, replace=False)  # all 200 training images, in that order
    ds = DS.subset(200, 0)
    p = predict(model, ds.train_x[probe], "cpu")
    assert last["train_conf_true"] == pytest.approx(float(p[np.arange(200), ds.train_y[probe]].mean()), abs=1e-6)
    assert last["train_acc_probe"] == float((p.argmax(1) == ds.train_y[probe]).mean())


def test_g_curve_every_must_be_a_count(tmp_path):
    with pytest.raises(ValueError, match="--curve-every must be an integer >= 0"):
        train(cfg(tmp_path / "c", 1, 0, curve_every=-1), dataset=DS, progress=False)
