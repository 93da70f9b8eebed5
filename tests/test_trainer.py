"""The trainer: the three batch modes, exact resume, seeds, schedules, early stopping, the guards."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpu_backprop.data import load_dataset
from gpu_backprop.trainer import History, fit, make_schedule


def _toy(n: int = 120, d: int = 12, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (c, d))
    y = rng.integers(0, c, n)
    X = (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    return X, y


def _images(n: int = 96, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    X = np.clip(rng.normal(60 * y[:, None, None], 30, (n, 5, 5)), 0, 255).astype(np.uint8)
    return X, y


@pytest.mark.parametrize("batch_size", [1, 16, "full"])
def test_every_batch_mode_learns(batch_size) -> None:
    X, y = _toy()
    net = gb.MLP([12, 16, 3], backend="numpy", seed=0)
    opt = gb.SGD(net, lr=0.05 if batch_size == 1 else 0.3, momentum=0.9 if batch_size != 1 else 0.0)
    h = fit(net, opt, X, y, epochs=4, batch_size=batch_size, validation=(X, y), progress=False)
    assert len(h.epochs) == 4
    assert h.epochs[-1]["loss"] < h.epochs[0]["loss"]
    assert h.epochs[-1]["val_accuracy"] > 0.9


def test_uint8_images_are_scaled_on_the_device() -> None:
    X, y = _images()
    net = gb.MLP([25, 8, 4], backend="numpy")
    h = fit(net, gb.SGD(net, lr=0.1, momentum=0.9), X, y, epochs=20, batch_size=16, validation=(X, y),
            progress=False)
    assert h.epochs[-1]["val_accuracy"] > 0.9
    loss, acc = gb.evaluate(net, X.reshape(96, -1).astype(np.float32) / 255, y)
    assert acc == pytest.approx(h.epochs[-1]["val_accuracy"]) and loss == pytest.approx(h.epochs[-1]["val_loss"],
                                                                                         rel=1e-5)


def test_same_seed_same_weights() -> None:
    X, y = _toy()
    nets = []
    for _ in range(2):
        net = gb.MLP([12, 16, 3], backend="numpy", seed=5, dropout=0.2)
        fit(net, gb.Adam(net, lr=0.01), X, y, epochs=2, batch_size=10, seed=9, progress=False)
        nets.append(net)
    np.testing.assert_array_equal(nets[0].flat_params, nets[1].flat_params)
    other = gb.MLP([12, 16, 3], backend="numpy", seed=5, dropout=0.2)
    fit(other, gb.Adam(other, lr=0.01), X, y, epochs=2, batch_size=10, seed=10, progress=False)
    assert not np.array_equal(other.flat_params, nets[0].flat_params)


@pytest.mark.parametrize("make_opt", [lambda n: gb.SGD(n, lr=0.1, momentum=0.9, nesterov=True),
                                      lambda n: gb.Adam(n, lr=0.01)], ids=["sgd-nesterov", "adam"])
def test_resume_continues_bit_for_bit(tmp_path: Path, make_opt) -> None:
    X, y = _toy()

    def new():
        net = gb.MLP([12, 16, 3], backend="numpy", seed=2, dropout=0.1)
        return net, make_opt(net)

    straight, opt = new()
    fit(straight, opt, X, y, epochs=4, batch_size=7, schedule="step:1:0.7", progress=False)

    first, opt1 = new()
    fit(first, opt1, X, y, epochs=2, batch_size=7, schedule="step:1:0.7", progress=False,
        checkpoint=tmp_path / "ckpt.npz")
    resumed, opt2 = new()
    h = fit(resumed, opt2, X, y, epochs=4, batch_size=7, schedule="step:1:0.7", progress=False,
            resume=tmp_path / "ckpt.npz")
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3, 4]


def test_schedules() -> None:
    step = make_schedule("step:2:0.5")
    assert [step(e, 0, 10) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cos = make_schedule("cosine")
    assert cos(0, 0, 100) == 1 and cos(0, 50, 100) == pytest.approx(0.5) and cos(0, 100, 100) == pytest.approx(0)
    one = make_schedule("onecycle")
    assert one(0, 0, 100) == pytest.approx(1 / 25) and one(0, 30, 100) == pytest.approx(1)
    assert one(0, 100, 100) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("exponential")
    for bad in ("step:0", "step:x", "step:2:-1", "step:2:nan"):
        with pytest.raises(ValueError, match=r"a step schedule multiplies the rate by GAMMA .* e.g. 'step:10:0.1'"):
            make_schedule(bad)


def test_the_schedule_drives_the_optimizer_lr() -> None:
    X, y = _toy()
    net = gb.MLP([12, 4, 3], backend="numpy")
    opt = gb.SGD(net, lr=0.2)
    h = fit(net, opt, X, y, epochs=3, batch_size=40, schedule="step:1:0.5", progress=False)
    assert [e["lr"] for e in h.epochs] == [0.2, 0.1, 0.05]
    assert opt.lr == 0.2  # the rate it was given: a second fit starts from it, not from the schedule's last
    h = fit(net, opt, X, y, epochs=1, batch_size=40, progress=False)
    assert h.epochs[0]["lr"] == 0.2


def test_early_stopping_restores_the_best_weights_but_checkpoints_and_calls_back_the_last_epoch(
        tmp_path: Path) -> None:
    X, y = _toy(n=60)
    Xv, yv = _toy(n=60, seed=7)
    yv = (yv + 1) % 3  # a validation set the network can only get worse at
    net = gb.MLP([12, 16, 3], backend="numpy", seed=1)
    seen: list[float] = []
    last: list[np.ndarray] = []  # the weights of each epoch as it ends (before the best are put back)

    def watch(record: dict[str, float]) -> None:
        seen.append(record["epoch"])
        last[:] = [net.flat_params.copy()]

    h = fit(net, gb.SGD(net, lr=0.2, momentum=0.9), X, y, epochs=30, batch_size=10, validation=(Xv, yv),
            patience=2, progress=False, checkpoint=tmp_path / "run.npz", callbacks=[watch])
    assert h.stopped_reason is gb.StopReason.EARLY_STOPPING and len(h.epochs) < 30
    assert h.stop_message.startswith("early stopping")
    best = min(range(len(h.epochs)), key=lambda i: h.epochs[i]["val_loss"])
    assert h.best_epoch == best + 1
    assert gb.evaluate(net, Xv, yv)[0] == pytest.approx(h.epochs[best]["val_loss"], rel=1e-5)
    assert h.best_epoch < len(h.epochs)
    assert seen == [e["epoch"] for e in h.epochs]  # the epoch that stopped the run too
    saved = gb.load_model(tmp_path / "run.npz")  # the last epoch's state, to resume; net holds the best epoch's
    np.testing.assert_array_equal(saved.flat_params, last[0])
    assert not np.array_equal(saved.flat_params, net.flat_params)


def test_a_run_with_patience_resumes_bit_for_bit(tmp_path: Path) -> None:
    """The best weights restored at the end of the first part are not what the second part continues from."""
    X, y = _toy(n=60)
    Xv, yv = _toy(n=60, seed=7)

    def run(epochs: int, **kw: Any) -> History:
        net = gb.MLP([12, 16, 3], backend="numpy", seed=1)
        return fit(net, gb.SGD(net, lr=0.2, momentum=0.9), X, y, epochs=epochs, batch_size=10,
                   validation=(Xv, (yv + 1) % 3), patience=50, progress=False, **kw)

    straight = run(6)
    first = run(3, checkpoint=tmp_path / "c.npz")
    assert first.best_epoch is not None  # its best epoch was put back into its network
    resumed = run(6, resume=tmp_path / "c.npz")
    assert [e["loss"] for e in resumed.epochs] == [e["loss"] for e in straight.epochs]


def test_a_resumed_run_says_how_it_ended_itself(tmp_path: Path) -> None:
    X, y = _toy()
    net = gb.MLP([12, 8, 3], backend="numpy")
    h = fit(net, gb.SGD(net, lr=0.1), X, y, epochs=4, batch_size=40, progress=False, checkpoint=tmp_path / "c.npz",
            callbacks=[lambda r: r["epoch"] == 2])
    assert h.stopped_reason is gb.StopReason.CALLBACK and len(h.epochs) == 2
    net = gb.MLP([12, 8, 3], backend="numpy")
    h = fit(net, gb.SGD(net, lr=0.1), X, y, epochs=4, batch_size=40, progress=False, resume=tmp_path / "c.npz")
    assert len(h.epochs) == 4 and h.stopped_reason is gb.StopReason.COMPLETED and h.stop_message is None


def test_divergence_stops_and_keeps_the_last_good_weights() -> None:
    X, y = _toy()
    net = gb.MLP([12, 16, 3], activation="identity", backend="numpy", seed=0)
    opt = gb.SGD(net, lr=1e9)
    with pytest.raises(gb.TrainingDiverged, match="diverged") as info:
        fit(net, opt, X, y, epochs=3, batch_size=10, progress=False)
    assert "layers." in str(info.value) and info.value.history.epochs == []  # it diverged in epoch 1
    assert np.all(np.isfinite(net.flat_params))


def test_divergence_puts_back_the_running_statistics_and_dropout_counters_too() -> None:
    X, y = _toy(n=512)
    nets = [gb.MLP([12, 32, 32, 3], batchnorm=True, dropout=0.1, backend="numpy", seed=1) for _ in range(2)]
    fit(nets[0], gb.SGD(nets[0], lr=0.05), X, y, epochs=1, batch_size=16, progress=False)
    good = nets[0].layer_states()  # as the check at the end of epoch 1 (step 32) kept them
    with pytest.raises(gb.TrainingDiverged) as info:  # the same run, blown up in epoch 2
        fit(nets[1], gb.SGD(nets[1], lr=0.05), X, y, epochs=3, batch_size=16, progress=False,
            schedule=lambda epoch, step, total: 1.0 if step < 40 else 1e30)
    assert info.value.step == 32
    for now, then in zip(nets[1].layer_states(), good):
        assert now.keys() == then.keys() and all(np.array_equal(now[k], then[k]) for k in now)
    assert np.all(np.isfinite(nets[1].predict(X)))  # NaN statistics made every prediction NaN


def test_divergence_puts_back_the_optimiser_state_with_its_step_count() -> None:
    X, y = _toy()
    net = gb.MLP([12, 16, 3], activation="identity", backend="numpy", seed=0)
    opt = gb.Adam(net, lr=1e-3)
    fit(net, opt, X, y, epochs=1, batch_size=10, progress=False)
    steps, m, v = opt.steps, opt.m.copy(), opt.v.copy()
    assert steps > 0
    opt.lr = 1e30  # the next run diverges before its first check
    with pytest.raises(gb.TrainingDiverged) as info:
        fit(net, opt, X, y, epochs=1, batch_size=10, progress=False)
    assert info.value.step == 0  # the good state is the one this run began with
    assert opt.steps == steps  # not the diverged run's count: Adam's bias correction would be off
    np.testing.assert_array_equal(opt.m, m)
    np.testing.assert_array_equal(opt.v, v)


def test_gradient_clipping_bounds_the_step() -> None:
    X, y = _toy()
    net = gb.MLP([12, 3], activation="identity", backend="numpy", seed=0)
    before = net.flat_params.copy()
    fit(net, gb.SGD(net, lr=1.0), X, y, epochs=1, batch_size=120, max_grad_norm=1e-3, progress=False)
    assert np.linalg.norm(net.flat_params - before) <= 1e-3 * (1 + 1e-4)


def test_history_json_round_trip(tmp_path: Path) -> None:
    X, y = _toy()
    net = gb.MLP([12, 4, 3], backend="numpy")
    h = fit(net, gb.SGD(net, lr=0.1), X, y, epochs=2, batch_size=30, validation=(X, y), progress=False)
    h.to_json(tmp_path / "h.json")
    again = History.from_json(tmp_path / "h.json")
    assert again == h and json.loads((tmp_path / "h.json").read_text())["epochs"][1]["epoch"] == 2


def test_history_from_a_file_names_its_stop_reason_or_keeps_an_old_message() -> None:
    h = History.from_dict({"epochs": [], "steps": [], "stopped_reason": "early_stopping", "stop_message": "patience"})
    assert (h.stopped_reason, h.stop_message) == (gb.StopReason.EARLY_STOPPING, "patience")
    old = History.from_dict({"stopped_reason": "stopped by a callback after epoch 3"})  # files before StopReason
    assert (old.stopped_reason, old.stop_message) == (gb.StopReason.COMPLETED, "stopped by a callback after epoch 3")
    assert History.from_dict({}).stopped_reason is gb.StopReason.COMPLETED


def test_checkpoint_is_atomic_and_checks_itself(tmp_path: Path) -> None:
    X, y = _toy()
    net = gb.MLP([12, 4, 3], backend="numpy")
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    path = save_checkpoint(tmp_path / "c.npz", net, opt, {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.npz"]  # no temporary left behind
    twin = gb.MLP([12, 4, 3], backend="numpy", seed=8)
    assert load_checkpoint(path, twin, gb.SGD(twin, lr=0.1, momentum=0.9)) == {"epoch": 1}
    np.testing.assert_array_equal(twin.flat_params, net.flat_params)

    blob = path.read_bytes()
    (tmp_path / "short.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "short.npz", twin, None)
    with pytest.raises(CheckpointError, match="different network"):
        load_checkpoint(path, gb.MLP([12, 5, 3], backend="numpy"), None)
    with pytest.raises(CheckpointError, match="'sgd' optimiser state, not 'adam'"):
        load_checkpoint(path, twin, gb.Adam(twin))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz", twin, None)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(batch_size=0), ValueError, "positive integer or 'full'"),
    (dict(batch_size=1000), ValueError, "larger than the 120"),
    (dict(batch_size="half"), ValueError, "'full'"),
    (dict(epochs=0), ValueError, "epochs"),
    (dict(patience=2), ValueError, "validation"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
])
def test_bad_arguments(kwargs, error, match) -> None:
    X, y = _toy()
    net = gb.MLP([12, 3], backend="numpy")
    with pytest.raises(error, match=match):
        fit(net, gb.SGD(net, lr=0.1), X, y, **{"epochs": 1, **kwargs}, progress=False)


@pytest.mark.parametrize("X,y,match", [
    (np.zeros((10, 11), np.float32), np.zeros(10, int), "11 features"),
    (np.zeros((10, 12), np.float32), np.zeros(9, int), "y has 9 rows but there are 10 samples"),
    (np.zeros((10, 12), np.float32), np.full(10, 3), r"\[0, 2\]"),
    (np.full((10, 12), np.nan, np.float32), np.zeros(10, int), "NaN"),
    (np.zeros((10, 12), np.int32), np.zeros(10, int), "uint8 images or float32"),
    (np.zeros((0, 12), np.float32), np.zeros(0, int), "empty"),
])
def test_bad_data_is_refused_before_training(X, y, match) -> None:
    net = gb.MLP([12, 3], backend="numpy")
    before = net.flat_params.copy()
    with pytest.raises((ValueError, TypeError), match=match):
        fit(net, gb.SGD(net, lr=0.1), X, y, epochs=1, batch_size=1, progress=False)
    np.testing.assert_array_equal(net.flat_params, before)


def test_fit_refuses_an_optimizer_of_another_network() -> None:
    X, y = _toy()
    a, b = gb.MLP([12, 3], backend="numpy"), gb.MLP([12, 3], backend="numpy")
    with pytest.raises(TypeError, match="optimizer built for this network"):
        fit(a, gb.SGD(b, lr=0.1), X, y, progress=False)


def test_mnist_sample_reaches_93_percent_quickly() -> None:
    """The CI target: the shipped 10,000 real digits, CPU, well under a minute."""
    ds = load_dataset("mnist-sample")
    net = gb.MLP([784, 256, 256, 10], backend="numpy", seed=0)
    h = fit(net, gb.SGD(net, lr=0.05, momentum=0.9), ds.x_train, ds.y_train, epochs=5, batch_size=64,
            validation=(ds.x_test, ds.y_test), progress=False)
    assert h.epochs[-1]["val_accuracy"] >= 0.93
    assert sum(e["seconds"] for e in h.epochs) < 60
    assert not math.isnan(h.epochs[-1]["samples_per_second"])


class OutOfMemoryError(MemoryError):
    """Stands in for cupy.cuda.memory.OutOfMemoryError (same name, same message format)."""


def test_out_of_memory_is_one_sentence_and_the_model_stays_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = _toy()
    net = gb.MLP([12, 16, 3], backend="numpy", seed=0)
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    before = net.flat_params.copy()
    real = net.train_step_grads

    def too_big(xb, yb, weight_grads=True):
        if xb.shape[0] > 32:
            raise OutOfMemoryError("Out of memory allocating 12,884,901,888 bytes (allocated so far: 1,024 bytes).")
        return real(xb, yb, weight_grads)

    monkeypatch.setattr(net, "train_step_grads", too_big)
    with pytest.raises(gb.DeviceMemoryError) as info:
        fit(net, opt, X, y, epochs=1, batch_size="full", progress=False)
    text = str(info.value)
    assert "batch 120" in text and "12.00 GiB" in text and "--batch-size 30" in text and "\n" not in text
    np.testing.assert_array_equal(net.flat_params, before)  # untouched
    h = fit(net, opt, X, y, epochs=2, batch_size=30, progress=False)  # and usable with a smaller batch
    assert h.epochs[-1]["loss"] < h.epochs[0]["loss"] or len(h.epochs) == 2


@pytest.mark.gpu
def test_real_gpu_out_of_memory_under_a_pool_limit() -> None:
    """With CuPy's memory pool capped, a full-batch step that needs more fails as one sentence and the model lives."""
    from gpu_backprop import backend

    cp = backend.cupy_module()
    pool = cp.get_default_memory_pool()
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (20_000, 784), dtype=np.uint8)
    y = rng.integers(0, 10, 20_000)
    net = gb.MLP([784, 2048, 2048, 10], backend="cupy", seed=0)
    opt = gb.SGD(net, lr=0.01, momentum=0.9)
    before = net.flat_params.copy()
    pool.set_limit(size=pool.used_bytes() + 200 * 2**20)  # 200 MiB more than the model and the data need
    try:
        with pytest.raises(gb.DeviceMemoryError, match="out of GPU memory .* batch 20000 .*--batch-size 5000"):
            fit(net, opt, X, y, epochs=1, batch_size="full", progress=False)
        assert bool((net.flat_params == before).all())
        h = fit(net, opt, X[:2000], y[:2000], epochs=1, batch_size=64, progress=False)
        assert np.isfinite(h.epochs[-1]["loss"])
    finally:
        pool.set_limit(size=0)


def test_fit_trains_a_regression_on_float_targets() -> None:
    """loss='mse' with float targets (N, C): fit, evaluate and predictions take them; no accuracy is made up."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    W = rng.standard_normal((5, 2)).astype(np.float32)
    T = np.tanh(X @ W)  # a smooth target the network can learn
    net = gb.MLP([5, 16, 2], activation="tanh", loss="mse", backend="numpy", seed=0)
    before = gb.evaluate(net, X, T)[0]
    h = gb.fit(net, gb.SGD(net, lr=0.1, momentum=0.9), X, T, epochs=30, batch_size=32, progress=False,
               validation_fraction=0.1)
    loss, accuracy = gb.evaluate(net, X, T)
    assert loss < before / 5 and np.isnan(accuracy)
    assert "accuracy" not in h.epochs[-1] and "val_accuracy" not in h.epochs[-1] and "val_loss" in h.epochs[-1]
    np.testing.assert_allclose(net.predict_proba(X[:3]), net.forward(net.check_inputs(X[:3])[0]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"targets must be labels \(400,\) or an array \(400, 2\)"):
        gb.fit(net, gb.SGD(net, lr=0.1), X, T[:, :1], epochs=1, progress=False)


@pytest.mark.parametrize("loss,output_activation", [("bce", None), ("mse", "sigmoid"), ("mse", None)])
def test_a_one_output_classifier_counts_what_it_predicts(loss: str, output_activation: str | None) -> None:
    """The accuracy that fit and evaluate report is that of predict_classes, whatever the loss."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 2)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    net = gb.MLP([2, 8, 1], activation="tanh", loss=loss, output_activation=output_activation, backend="numpy")
    h = gb.fit(net, gb.SGD(net, lr=0.5, momentum=0.9), X, y, epochs=10, batch_size=30, progress=False)
    predicted = float(np.mean(net.predict_classes(X) == y))
    assert gb.evaluate(net, X, y)[1] == predicted > 0.9
    assert h.epochs[-1]["accuracy"] > 0.9


def test_batchnorm_never_meets_a_batch_of_one_sample_and_a_refusal_loses_nothing() -> None:
    X, y = _toy(n=33)
    net = gb.MLP([12, 5, 3], batchnorm=True, backend="numpy")
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    before = net.state_dict()
    with pytest.raises(ValueError, match="makes a batch of 1 and BatchNorm needs at least 2"):
        fit(net, opt, X, y, batch_size=16, progress=False)  # 16 + 16 + 1: the last step would raise
    with pytest.raises(ValueError, match="makes a batch of 1"):
        fit(net, opt, X, y, batch_size=29, validation_fraction=0.1, progress=False)  # 33 - 3 held out = 29 + 1
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items()) and opt.steps == 0
    data = gb.batches.Batches(net, X[:32], y[:32])
    assert data.batch_size(16, ranks=4) == 16  # 16 rows: 4 on each of 4 ranks
    with pytest.raises(ValueError, match=r"makes a batch of 6, cut into 4 shards"):
        data.batch_size(13, ranks=4)  # the last batch of 6 leaves 1 row on two ranks
    assert fit(net, opt, X, y, batch_size=11, epochs=1, progress=False).epochs[0]["loss"] > 0


def test_predict_classes_reads_the_outputs_as_the_accuracy_counts_them() -> None:
    net = gb.Sequential([gb.Dense(2, 1)], loss="bce", backend="numpy")
    net.params["layers.0.W"][...] = 0
    net.params["layers.0.b"][...] = 1e-8  # a logit above 0 whose sigmoid rounds to ½ in float32
    X = np.ones((3, 2), np.float32)
    assert net.predict_proba(X)[0, 0] == 0.5
    assert list(net.predict_classes(X)) == [1, 1, 1] and gb.evaluate(net, X, np.ones(3, np.int64))[1] == 1.0
