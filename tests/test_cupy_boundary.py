"""Every public entry point with ``backend="cupy"``, on the CPU, against the CuPy stand-in (tests/fakecupy).

No line of the CuPy path had run before a GPU did. Here it runs in CI: ``gb.fit`` and ``gb.evaluate``
given NumPy or CuPy data, ``net.predict``, ``net.loss_and_grads``, the command line's ``train`` (and
``scripts/train_mnist.py``, which picks CuPy by itself where a device answers), ``bench``, and one-rank
distributed training over NCCL and MPI — each compared with the NumPy backend where there is a result
to compare. The kernels run for real (their CUDA text compiled with g++, see tests/fakecupy); the
tests that need that skip without g++.

The defects these tests were written for (each test fails on the code before its fix):

1. ``fit``/``evaluate`` refused NumPy data for a CuPy network ("mixed devices") although the data is
   moved; and float data then reached ``cupy.isfinite`` as a NumPy array.
2. The NCCL engine read ``cupy.cuda.nccl``, which CuPy 14 does not import with ``cupy``.
3. The raw kernels read int64, row-major arrays through pointers: int32 or strided labels, a strided
   ``z`` or float64 targets were read wrongly; the gather kernel refused int32 rows.
4. ``backend_info()`` reported TF32 from an environment variable, not CuPy's compute type; a CuPy
   batch allocated a host-only staging buffer.
5. ``fit(batch_size=1)`` on CuPy ran about twenty launches a sample instead of the fused kernel.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _custom_layers import Shifted
from _stand_in import (
    ROOT,
    needs_compiler,
    stand_in,
    stand_in_command,
    subprocess_env,
)

import gpu_backprop as gb
from gpu_backprop import batches, devices, history, kernels, trainer
from gpu_backprop.distributed import mpiexec_path
from gpu_backprop.experimental import persample
from gpu_backprop.kernels import _cuda

pytestmark = needs_compiler


@pytest.fixture
def cp() -> Any:
    with stand_in() as module:
        yield module


def _data(n: int = 260, d: int = 20, classes: int = 4, kind: str = "uint8", seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    if kind == "uint8":
        X = rng.integers(0, 256, (n, d), dtype=np.uint8)
        X[:, : d // 4] = 0  # blank pixels, as in MNIST
        return X, y
    return rng.standard_normal((n, d)).astype(kind), y


def _twins(sizes: list[int], *, opt: str = "sgd", dtype: str = "float32", **kw: Any):
    """The same network and optimiser on NumPy and on (stand-in) CuPy."""
    a = gb.MLP(sizes, backend="numpy", dtype=dtype, seed=3, **kw)
    b = a.copy(backend="cupy")
    make = {"sgd": lambda n: gb.SGD(n, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "plain": lambda n: gb.SGD(n, lr=0.05),
            "adam": lambda n: gb.Adam(n, lr=1e-2)}[opt]
    return a, make(a), b, make(b)


def _close(host: np.ndarray, device: Any, tol: float) -> None:
    got = device.get()
    scale = max(np.abs(host).max(), 1e-30)
    assert np.abs(got - host).max() / scale < tol, f"relative error {np.abs(got - host).max() / scale:.3g}"


# --------------------------------------------------------------------------
# 1. fit and evaluate move NumPy data to a CuPy network
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("batch", [128, "full"])
def test_fit_moves_numpy_data_to_a_cupy_network_and_equals_numpy(cp, kind: str, batch: Any) -> None:
    X, y = _data(kind=kind)
    Xv, yv = _data(n=90, kind=kind, seed=1)
    a, oa, b, ob = _twins([20, 16, 4])
    ha = gb.fit(a, oa, X, y, epochs=2, batch_size=batch, validation=(Xv, yv), progress=False, seed=5)
    hb = gb.fit(b, ob, X, y.astype(np.int32), epochs=2, batch_size=batch, validation=(Xv, yv), progress=False,
                seed=5)
    _close(a.flat_params, b.flat_params, 1e-4)
    for ea, eb in zip(ha.epochs, hb.epochs):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert eb[key] == pytest.approx(ea[key], rel=1e-4, abs=1e-6), key
    assert gb.evaluate(b, Xv, yv) == pytest.approx(gb.evaluate(a, Xv, yv), rel=1e-4)


def test_fit_takes_cupy_data_as_it_is_and_evaluate_takes_both(cp) -> None:
    X, y = _data()
    a, oa, b, ob = _twins([20, 16, 4])
    gb.fit(a, oa, X, y, epochs=1, batch_size=64, progress=False)
    Xd, yd = cp.asarray(X), cp.asarray(y)
    uploads = cp._fake.uploads
    gb.fit(b, ob, Xd, yd, epochs=1, batch_size=64, progress=False)
    assert cp._fake.uploads == uploads  # device data is not copied back and forth
    _close(a.flat_params, b.flat_params, 1e-4)
    ref = gb.evaluate(a, X, y)
    assert gb.evaluate(b, Xd, yd) == pytest.approx(ref, rel=1e-4)
    assert gb.evaluate(b, X, y) == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("where", ["numpy", "cupy"])
def test_bad_data_for_a_cupy_network_is_one_sentence(cp, where: str) -> None:
    net = gb.MLP([20, 8, 4], backend="cupy")
    opt = gb.SGD(net)
    X, y = _data(n=30, kind="float32")
    X[3, 4] = np.nan
    move = cp.asarray if where == "cupy" else (lambda a: a)
    with pytest.raises(ValueError, match=r"^training data X contains NaN or Inf; clean or impute the data first$"):
        gb.fit(net, opt, move(X), move(y), epochs=1, progress=False)
    X[3, 4] = 0
    y[0] = 7
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] .* got values from 0 to 7$"):
        gb.evaluate(net, move(X), move(y))
    with pytest.raises(TypeError, match="labels have dtype float64; pass integer class labels"):
        gb.evaluate(net, move(X), move(y.astype(np.float64)))


# --------------------------------------------------------------------------
# The network's own entry points
# --------------------------------------------------------------------------
def test_predict_and_loss_and_grads_on_cupy_equal_numpy(cp) -> None:
    X, y = _data(n=50, kind="float32")
    a, _, b, _ = _twins([20, 16, 4], dropout=0.2)
    Xd = cp.asarray(X)
    _close(a.predict(X), b.predict(Xd), 1e-5)
    for labels in (y, y.astype(np.int32)):
        la, ga = a.loss_and_grads(X, labels)
        lb, gb_ = b.loss_and_grads(Xd, cp.asarray(labels))
        assert lb == pytest.approx(la, rel=1e-5)
        for k in ga:
            _close(ga[k], gb_[k], 1e-4)
    T = np.eye(4, dtype=np.float32)[y]  # one-hot targets
    assert b.evaluate_loss(Xd, cp.asarray(T)) == pytest.approx(a.evaluate_loss(X, T), rel=1e-5)
    _close(a.predict_proba(X), b.predict_proba(X), 1e-5)  # predictions take what fit takes, from either device
    images = (X * 255).astype(np.uint8)
    np.testing.assert_array_equal(a.predict_classes(images), b.predict_classes(cp.asarray(images)).get())
    with pytest.raises(TypeError, match=r"mixed devices: .* X is a NumPy array \(CPU\)"):
        b.loss_and_grads(X, y)  # the low-level entry point does not move a batch behind the caller's back


@pytest.mark.parametrize("layout", ["column-major", "strided"])
def test_column_major_and_strided_device_data_give_what_numpy_gives(cp, layout: str) -> None:
    """CuPy keeps a column-major array column-major (``asarray``, order 'K'); the raw kernels read rows."""
    X, y = _data(n=120, kind="float32")
    if layout == "column-major":
        X = np.asfortranarray(X)
        Xd = cp.asarray(X)
    else:
        Xd = cp.asarray(X.repeat(2, axis=1))[:, ::2]  # every other column of a device array
    T = np.eye(4, dtype=np.float32)[y]
    assert not Xd.flags.c_contiguous and Xd.get().tolist() == X.tolist()
    a, oa, b, ob = _twins([20, 16, 4], dropout=0.2)
    la, ga = a.loss_and_grads(X, y)
    lb, gb_ = b.loss_and_grads(Xd, cp.asarray(y))
    assert lb == pytest.approx(la, rel=1e-5)
    for k in ga:
        _close(ga[k], gb_[k], 1e-4)
    Td = cp.asarray(np.asfortranarray(T))
    assert b.evaluate_loss(Xd, Td) == pytest.approx(a.evaluate_loss(X, T), rel=1e-5)
    gb.fit(a, oa, X, y, epochs=2, batch_size=32, progress=False, seed=5)
    gb.fit(b, ob, Xd, cp.asarray(y), epochs=2, batch_size=32, progress=False, seed=5)
    _close(a.flat_params, b.flat_params, 1e-4)
    _close(a.predict_proba(X), b.predict_proba(Xd), 1e-5)
    assert gb.evaluate(b, Xd, cp.asarray(y)) == pytest.approx(gb.evaluate(a, X, y), rel=1e-4)


class _HostOnly(pickle.Unpickler):
    """Unpickles what needs no CuPy: a pickle that holds a device array fails here."""

    def find_class(self, module: str, name: str) -> Any:
        assert module.split(".")[0] not in ("cupy", "cupyx", "cupy_backends", "fakecupy"), f"{module}.{name}"
        return super().find_class(module, name)


def test_a_network_and_optimizer_pickled_on_cupy_hold_no_device_array_and_come_back_on_it(cp) -> None:
    X, y = _data(n=50, kind="float32")
    net = gb.Sequential([gb.Dense(20, 16), gb.ReLU(), Shifted(16, 4)], backend="cupy", seed=3)
    net.layers[2].shift = cp.asarray(np.linspace(-1, 1, 4, dtype=np.float32))
    opt = gb.SGD(net, lr=0.05, momentum=0.9)
    gb.fit(net, opt, X, y, epochs=1, batch_size=16, progress=False)
    blob = pickle.dumps((net, opt))
    twin, twin_opt = _HostOnly(io.BytesIO(blob)).load()  # the device arrays are remade from host arrays
    np.testing.assert_array_equal(twin.layers[2].shift.get(), net.layers[2].shift.get())
    assert twin.backend.name == "cupy" and cp.get_array_module(twin.layers[2].shift) is cp
    assert not any(hasattr(twin.layers[2], name) for name in gb.Dense.per_batch)
    np.testing.assert_array_equal(twin.predict(X).get(), net.predict(X).get())
    for o in (opt, twin_opt):
        o.train_step(cp.asarray(X), cp.asarray(y))
    np.testing.assert_array_equal(twin.flat_params.get(), net.flat_params.get())


def test_a_copy_on_another_backend_moves_a_layer_of_the_users_own_arrays_too(cp) -> None:
    X, _ = _data(n=30, kind="float32")
    net = gb.Sequential([gb.Dense(20, 16), gb.ReLU(), Shifted(16, 4)], backend="numpy", seed=3)
    net.layers[2].shift = np.linspace(-1, 1, 4, dtype=np.float32)
    on_gpu = net.copy(backend="cupy")
    assert cp.get_array_module(on_gpu.layers[2].shift) is cp  # where the layer computes
    np.testing.assert_allclose(on_gpu.predict(X).get(), net.predict(X), rtol=1e-6)
    back = on_gpu.copy(backend="numpy")
    assert isinstance(back.layers[2].shift, np.ndarray)
    np.testing.assert_allclose(back.predict(X), net.predict(X), rtol=1e-6)


def test_state_dict_copies_the_parameters_from_the_device_at_once(cp) -> None:
    net = gb.MLP([20, 16, 16, 4], backend="cupy", seed=3)
    cp._fake.reset_counts()
    state = net.state_dict()
    assert cp._fake.syncs == 1  # one wait for six parameters
    host = net.flat_params.get()
    for name, value in state.items():
        np.testing.assert_array_equal(value, net.flat.view(host, name))
        assert value.base is None  # its own array, not a view that keeps the whole buffer alive


# --------------------------------------------------------------------------
# 3. The raw kernels read what they are given, whatever its dtype and layout
# --------------------------------------------------------------------------
def test_softmax_kernel_takes_int32_and_strided_labels_strided_logits_and_other_float_targets(cp) -> None:
    rng = np.random.default_rng(4)
    wide = (3 * rng.standard_normal((40, 24))).astype(np.float32)
    labels = rng.integers(0, 12, 80)
    z = wide[:, ::2]  # (40, 12), strided
    targets = rng.dirichlet(np.ones(12), 40)  # float64 targets for float32 logits
    want_rows, want_dz = np.empty(40, np.float32), np.empty((40, 12), np.float32)
    kernels.softmax_cross_entropy(np.ascontiguousarray(z), labels[::2], None, want_dz, want_rows)
    for lab in (cp.asarray(labels[::2].astype(np.int32)), cp.asarray(labels)[::2]):
        rows, dz = cp.empty(40, np.float32), cp.empty((40, 12), np.float32)
        kernels.softmax_cross_entropy(cp.asarray(wide)[:, ::2], lab, None, dz, rows)
        _close(want_rows, rows, 1e-5)
        _close(want_dz, dz, 1e-5)
    kernels.softmax_cross_entropy(np.ascontiguousarray(z), None, targets.astype(np.float32), want_dz, want_rows)
    rows, dz = cp.empty(40, np.float32), cp.empty((40, 12), np.float32)
    kernels.softmax_cross_entropy(cp.asarray(z), None, cp.asarray(targets), dz, rows)
    _close(want_rows, rows, 1e-5)
    _close(want_dz, dz, 1e-5)
    loss = gb.losses.SoftmaxCrossEntropy  # (one per device: a loss keeps its buffers)
    expect = float(loss().forward(np.ascontiguousarray(z), labels[::2]))
    got = float(loss().forward(cp.asarray(z), cp.asarray(labels[::2].astype(np.int32))))
    assert got == pytest.approx(expect, rel=1e-5)


def test_count_correct_refuses_an_accumulator_on_the_other_device(cp) -> None:
    out, labels = cp.asarray(np.eye(3, dtype=np.float32)), cp.arange(3)
    with pytest.raises(TypeError, match="0-d int64 array on the outputs' device, got shape \\(\\) of int64 on the CPU"):
        kernels.count_correct(out, labels, np.zeros((), np.int64))  # its kernel would add at a host address
    assert int(kernels.count_correct(out, labels, cp.zeros((), np.int64))) == 3


def test_gather_kernel_takes_int32_rows(cp) -> None:
    X, _ = _data(n=50)
    rows = np.array([3, 0, 49, 7], np.int32)
    want = np.empty((4, 20), np.float32)
    kernels.gather_scale(X, rows, 1 / 255, want)
    got = cp.empty((4, 20), np.float32)
    kernels.gather_scale(cp.asarray(X), cp.asarray(rows), 1 / 255, got)
    _close(want, got, 1e-6)


def test_fused_kernel_launch_takes_strided_labels_order_and_rates_of_any_integer_type(cp) -> None:
    X, y = _data(n=60, d=12, classes=3)
    order = np.random.default_rng(2).permutation(60)[:12]
    rates = np.linspace(0.01, 0.1, 12)
    a, oa, b, ob = _twins([12, 8, 3])
    cp._fake.SMS = 1  # one block of 256 host threads
    persample.per_sample_sgd_reference(a, oa, X, y, order, scale=1 / 255, lr=rates)
    persample.per_sample_sgd_reference(a, oa, X, y, order, scale=1 / 255, lr=rates)

    def strided(v: np.ndarray, dtype: Any) -> Any:
        return cp.asarray(np.repeat(v, 2).astype(dtype))[::2]

    for dtype in (np.int64, np.int32):
        persample.per_sample_sgd(b, ob, cp.asarray(X), strided(y, dtype), strided(order, dtype), scale=1 / 255,
                                 lr=strided(rates, np.float64), method="kernel", check=True)
    _close(a.flat_params, b.flat_params, 1e-5)


def test_softmax_raw_kernel_compiles_as_raw_source_builds_it(cp) -> None:
    for dtype in (np.float32, np.float64):
        kernel = cp.RawKernel(_cuda.raw_source("softmax_xent", dtype), _cuda.raw_name("softmax_xent", dtype)).kernel
        assert kernel.ptr


# --------------------------------------------------------------------------
# 4. TF32 as CuPy has it; no staging buffer on the device
# --------------------------------------------------------------------------
def test_tf32_is_cupys_compute_type_both_ways(cp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUPY_TF32", "0")
    linalg = cp._core._routines_linalg
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)  # set by CuPy itself, not through gpu_backprop
    assert gb.backend_info("cupy")["tf32"] == "True" and devices.tf32_enabled()
    assert devices.set_tf32(False) is False and linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    assert gb.backend_info("cupy")["tf32"] == "False"
    assert devices.set_tf32(True) is True and linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    cp._fake.CC = "75"  # a GPU before Ampere: CuPy warns and keeps the default
    with pytest.warns(UserWarning, match="compute capability 8.0 or higher"):
        assert devices.set_tf32(True) is False
    assert gb.backend_info("cupy")["tf32"] == "False"


def test_a_cupy_batch_allocates_only_its_float_buffer(cp) -> None:
    X, _ = _data(n=600, d=100)
    net = gb.MLP([100, 8, 4], backend="cupy")
    data = batches.Batches(net, cp.asarray(X), cp.zeros(X.shape[0], dtype=np.int64))
    pool = cp.get_default_memory_pool()
    before = pool.used_bytes()
    data.get(cp.arange(128, dtype=np.int64))

    def unit(nbytes: int) -> int:  # CuPy's pool allocates in units of 512 bytes
        return -(-nbytes // 512) * 512

    assert pool.used_bytes() - before == unit(128 * 100 * 4)  # no (128, 100) uint8 staging buffer
    full = data.full()
    assert pool.used_bytes() - before == unit(128 * 100 * 4) + unit(600 * 100 * 4)  # the full batch once, not twice
    _close(X.astype(np.float32) / 255, full, 1e-7)


# --------------------------------------------------------------------------
# 5. Batch 1 on CuPy: the fused per-sample kernel where it applies, the general path elsewhere
# --------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_fit_batch_1_runs_the_fused_kernel_and_equals_numpy(cp, schedule: str | None) -> None:
    X, y = _data(n=24, d=12, classes=3)
    a, oa, b, ob = _twins([12, 8, 3])
    cp._fake.SMS = 1
    ha = gb.fit(a, oa, X, y, epochs=2, batch_size=1, progress=False, schedule=schedule, validation=(X, y))
    cp._fake.reset_counts()
    hb = gb.fit(b, ob, X, y, epochs=2, batch_size=1, progress=False, schedule=schedule, validation=(X, y))
    launches = cp._fake.launches
    assert launches["per_sample_sgd"] == 2 and launches["momentum_sgd"] == 0  # one launch per run of 24 samples
    _close(a.flat_params, b.flat_params, 1e-5)
    _close(oa.velocity, ob.velocity, 1e-5)
    assert ob.steps == oa.steps == 48 and ob.lr == pytest.approx(oa.lr)
    for ea, eb in zip(ha.epochs, hb.epochs):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert eb[key] == pytest.approx(ea[key], rel=1e-5), key


@pytest.mark.parametrize("case", ["adam", "dropout", "one layer", "mse", "clipping"])
def test_fit_batch_1_falls_back_to_the_general_path_and_equals_numpy(cp, case: str) -> None:
    X, y = _data(n=20, d=12, classes=3)
    sizes, opt, kw, fit_kw = [12, 8, 3], "sgd", {}, {}
    if case == "adam":
        opt = "adam"
    elif case == "dropout":
        kw = {"dropout": 0.25}
    elif case == "one layer":
        sizes = [12, 3]
    elif case == "mse":
        kw = {"loss": "mse", "output_activation": "sigmoid"}
    else:
        fit_kw = {"max_grad_norm": 0.5}
    a, oa, b, ob = _twins(sizes, opt=opt, **kw)
    gb.fit(a, oa, X, y, epochs=1, batch_size=1, progress=False, **fit_kw)
    cp._fake.reset_counts()
    gb.fit(b, ob, X, y, epochs=1, batch_size=1, progress=False, **fit_kw)
    assert cp._fake.launches["per_sample_sgd"] == 0 and cp._fake.launches["gemm"] > 0
    _close(a.flat_params, b.flat_params, 1e-4)


def test_the_fused_grid_is_one_block_per_sm_and_never_more_than_fit_at_once(cp) -> None:
    cp._fake.SMS = 3
    net = gb.MLP([12, 8, 3], backend="cupy")
    assert persample.fused_grid(net, np.uint8) == 3
    assert persample.fused_grid(net, np.uint8, 5) == 5
    assert persample.fused_grid(net, np.uint8, 10_000) == 3 * 8  # 8 blocks of 256 threads fit on an SM at once


def test_fused_batch_1_divergence_stops_and_keeps_finite_weights(cp) -> None:
    X, y = _data(n=24, d=12, classes=3, kind="float32")
    net = gb.MLP([12, 8, 3], backend="cupy")
    cp._fake.SMS = 1
    with pytest.raises(gb.TrainingDiverged, match="training diverged"):
        gb.fit(net, gb.SGD(net, lr=1e30), X * 1e3, y, epochs=2, batch_size=1, progress=False)
    assert np.isfinite(net.flat_params.get()).all()


@pytest.mark.parametrize("batch", [8, 1])
def test_training_steps_never_wait_for_the_device(cp, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "_FUSED_RUN", 8)  # batch 1: runs of 8 samples, one launch each
    monkeypatch.setattr(history, "REFRESH_SECONDS", 1e9)
    cp._fake.SMS = 1
    waits = []
    for n in (8, 24):
        X, y = _data(n=n, d=12, classes=3)
        net = gb.MLP([12, 8, 3], backend="cupy")
        Xd, yd = cp.asarray(X), cp.asarray(y)
        cp._fake.reset_counts()
        gb.fit(net, gb.SGD(net, lr=0.05, momentum=0.9), Xd, yd, epochs=1, batch_size=batch, progress=False)
        waits.append(cp._fake.syncs)
        assert (cp._fake.launches["per_sample_sgd"] > 0) == (batch == 1)
    assert waits[0] == waits[1]  # one step (run) or three: the same waits, none per step


# --------------------------------------------------------------------------
# The command line, the benchmark, distributed training: whole processes on the stand-in
# --------------------------------------------------------------------------
def _run(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
                          env=subprocess_env(**env))


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("batch", ["128", "full"])
def test_command_line_trains_with_cupy(batch: str, tmp_path: Path) -> None:
    proc = _run(stand_in_command("-m", "gpu_backprop", "train", "--backend", "cupy", "--dataset", "mnist-sample",
                                 "--epochs", "1", "--hidden", "32", "--batch-size", batch, "--lr", "0.1",
                                 "--tf32", "--json", "--no-progress", "--out", str(tmp_path / "run")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    assert result["backend"] == "cupy" and "CuPy stand-in" in result["device"]
    assert result["test_accuracy"] > (0.6 if batch == "128" else 0.1)
    assert (tmp_path / "run" / "checkpoint.npz").exists() and (tmp_path / "run" / "history.json").exists()


def test_train_mnist_script_picks_cupy_by_itself_and_trains() -> None:
    proc = _run(stand_in_command(str(ROOT / "scripts" / "train_mnist.py"), "--dataset", "mnist-sample",
                                 "--epochs", "1", "--hidden", "32", "--json", "--no-progress"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend cupy on GPU 0: CuPy stand-in" in proc.stderr  # (with --json the lines for people go there)
    assert _last_json(proc.stdout)["test_accuracy"] > 0.6


def test_bench_quick_runs_on_cupy(tmp_path: Path) -> None:
    # The suite's CuPy GEMM limit is timed at n >= 8192 (two seconds on a GPU, minutes on these cores): the
    # rate itself is not under test here, so the stand-in's run times it at n = 256.
    cap = ("import gpu_backprop.tools.bench.suite as s; g = s.gemm_rate; "
           "s.gemm_rate = lambda be, n, *a, **k: g(be, min(n, 256), *a, **k); ")
    cmd = stand_in_command("-m", "gpu_backprop", "bench", "--quick", "--backend", "cupy", "--no-peers",
                           "--batch", "1", "128", "--repeats", "1", "--seconds", "0.05", "--patience", "0",
                           "--max-load", "1000", "--out", str(tmp_path), "--name", "stand-in")
    cmd[2] = cmd[2].replace("a = sys.argv[1:]", cap + "a = sys.argv[1:]")
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "stand-in.json").read_text())
    facts = report["facts"]
    assert "CuPy stand-in" in facts["gpu"] and facts["cuda_runtime"] == 13020 and facts["tf32"] is False
    assert {r["batch"] for r in report["results"] if r["backend"] == "cupy"} == {1, 128}
    assert report["limits"]["cupy"]["gemm_fp32_flops"] > 0 and report["limits"]["cupy"]["gemm_tf32_flops"] > 0


needs_mpi = pytest.mark.skipif(mpiexec_path() is None or __import__("importlib").util.find_spec("mpi4py") is None,
                               reason="mpi4py and mpiexec are needed (pip install -e '.[mpi]')")


@needs_mpi
@pytest.mark.parametrize("engine", ["nccl", "mpi"])
def test_one_rank_distributed_training_on_cupy(engine: str) -> None:
    from gpu_backprop.distributed import OPEN_MPI_ENV

    proc = _run([mpiexec_path() or "mpiexec", "-n", "1",
                 *stand_in_command("-m", "gpu_backprop", "train", "--backend", "cupy", "--dataset", "mnist-sample",
                                   "--epochs", "1", "--hidden", "32", "--distributed", engine, "--json",
                                   "--no-progress")], **OPEN_MPI_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"1 rank ({engine}" in proc.stderr and _last_json(proc.stdout)["test_accuracy"] > 0.6


@needs_mpi
def test_nccl_says_which_wheel_to_install_for_this_cuda(tmp_path: Path) -> None:
    from gpu_backprop.distributed import OPEN_MPI_ENV

    proc = _run([mpiexec_path() or "mpiexec", "-n", "1",
                 *stand_in_command("-m", "gpu_backprop", "train", "--backend", "cupy", "--dataset", "mnist-sample",
                                   "--epochs", "1", "--distributed", "nccl")], FAKECUPY_NCCL="0", **OPEN_MPI_ENV)
    assert proc.returncode == 2
    assert "CuPy cannot load NCCL; install it with `pip install nvidia-nccl-cu13`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_use_device_makes_that_gpu_current_and_refuses_one_that_is_not_there(cp) -> None:
    cp._fake.DEVICES = 2
    numpy_backend = gb.get_backend("numpy")  # before CuPy loads
    gpu0 = gb.get_backend("cupy")
    assert gpu0.device.startswith("GPU 0:") and gb.get_backend("cupy") is gpu0
    devices.use_device(1)
    assert cp.cuda.Device().id == 1 and gb.get_backend("cupy").device.startswith("GPU 1:")  # described anew
    assert gb.get_backend("numpy") is numpy_backend  # the CPU is the same whichever GPU is current
    for bad, words in ((2, "there is no CUDA device 2: this machine has 2 (devices 0 to 1)"), (-1, "0, 1, ..."),
                       (True, "0, 1, ...")):
        with pytest.raises(gb.BackendError, match=re.escape(words)):
            devices.use_device(bad)
    devices.use_device(0)
