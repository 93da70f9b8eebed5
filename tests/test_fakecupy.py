"""The CuPy stand-in (tests/fakecupy) behaves like CuPy 14.2 where gpu_backprop meets it.

* Its layout and messages against a real CuPy (no GPU needed): the same names after ``import cupy``
  (and not ``cupy.cuda.nccl``), the same constants and errors, and — for every kernel of the
  project's registry, at its call sites' shapes — the same CUDA source text from
  ``ElementwiseKernel``. Runs where a real CuPy imports: the test interpreter, or ``$REAL_CUPY_PYTHON``.
* Its own rules: no implicit conversion to NumPy, NumPy operands refused, synchronisations counted,
  garbage in fresh memory, the memory limit, NCCL's ids.
* Its kernels run: every kernel of the registry, compiled with g++ from the very text CuPy would
  compile, equals its NumPy body (skipped without g++).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _stand_in import TESTS, needs_compiler, stand_in, subprocess_env

from gpu_backprop import kernels
from gpu_backprop.kernels import _cuda

PROBE = TESTS / "_cupy_probe.py"


def _real_cupy_python() -> str | None:
    """An interpreter where the real CuPy imports: $REAL_CUPY_PYTHON, else this one if it has CuPy."""
    if os.environ.get("REAL_CUPY_PYTHON"):
        return os.environ["REAL_CUPY_PYTHON"]
    if importlib.util.find_spec("cupy") is not None and "fakecupy" not in str(importlib.util.find_spec("cupy").origin):
        return sys.executable
    return None


REAL_CUPY = _real_cupy_python()


# --------------------------------------------------------------------------
# Against the real CuPy
# --------------------------------------------------------------------------
def _calls() -> list[dict[str, Any]]:
    """Every registered elementwise kernel with arguments shaped like its call sites, float32 and float64,
    and the layouts that matter: a bias broadcast over rows, a strided batch, a strided data set."""
    B, F, N = 64, 100, 500

    def arr(shape: tuple, dtype: Any, strides: tuple | None = None) -> dict:
        return {"array": [list(shape), np.dtype(dtype).name, list(strides) if strides else None]}

    def f(v: float) -> dict:
        return {"scalar": ["float", v]}

    def i(v: int) -> dict:
        return {"scalar": ["int", v]}

    calls = []
    for T in ("float32", "float64"):
        size = np.dtype(T).itemsize
        mat, vec, flat = arr((B, F), T), arr((F,), T), arr((B * F,), T)
        args: dict[str, list] = {}
        for kind in kernels.ACTIVATIONS:
            args[f"{kind}_fwd"] = [f(0.01), mat]
            args[f"bias_{kind}_fwd"] = [vec, f(0.01), mat]
            args[f"{kind}_bwd"] = [mat, f(0.01), mat]
        args["bn_fwd"] = [mat, vec, vec, vec, vec, mat, mat]
        args["bn_bwd"] = [mat, mat, vec, vec, vec, f(1 / B), mat]
        args["sgd"] = [flat, f(0.1), f(0.01), i(5), flat]
        args["momentum_sgd"] = [flat, f(0.1), f(0.9), f(0.01), i(5), {"scalar": ["bool", True]}, flat, flat]
        args["adam"] = [flat, f(1e-3), f(0.9), f(0.999), f(1e-8), f(0.01), {"scalar": ["bool", False]}, f(0.1),
                        f(0.001), i(5), flat, flat, flat]
        args["hash_u32"] = [{"scalar": ["uint64", 12345]}, arr((N,), "uint32")]
        args["dropout_fwd"] = [{"scalar": ["uint64", 12345]}, {"scalar": ["uint32", 2**31]}, f(2.0), mat, mat]
        args["gather_scale"] = [arr((N, F), "uint8"), arr((B,), "int64"), i(F), f(1 / 255), mat]
        assert set(args) == set(_cuda.ELEMENTWISE), "a kernel was added to the registry: give it call-site arguments"
        for name, a in args.items():
            calls.append({"name": name, "args": a})
        strided = arr((B, F), T, (2 * F * size, size))  # every other row of a wider buffer
        calls.append({"name": "bias_relu_fwd", "args": [vec, f(0.01), strided]})
        calls.append({"name": "relu_bwd", "args": [strided, f(0.01), mat]})
        calls.append({"name": "gather_scale", "args": [arr((N, F), "uint8", (2 * F, 1)), arr((B,), "int64", (16,)),
                                                        i(F), f(1 / 255), mat]})
    for c in calls:
        c["in_params"], c["out_params"], c["operation"] = _cuda.ELEMENTWISE[c["name"]]
    return calls


def _probe(python: str, *flags: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([python, str(PROBE), *flags], input=json.dumps(_calls()), capture_output=True, text=True,
                          check=False, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def real_and_stand_in() -> tuple[dict[str, Any], dict[str, Any]]:
    if REAL_CUPY is None:
        pytest.skip("no real CuPy here: install cupy-cuda13x in the test environment or set $REAL_CUPY_PYTHON "
                    "to an interpreter that has it (it needs no GPU)")
    real = _probe(REAL_CUPY, env={**os.environ, "CUPY_TF32": "0"})
    nccl = "1" if real["nccl"]["available"] else "0"
    fake = _probe(sys.executable, "--stand-in", env=subprocess_env(FAKECUPY_NCCL=nccl, CUPY_TF32="0"))
    return real, fake


def test_the_stand_in_has_what_cupy_has_after_import_cupy(real_and_stand_in) -> None:
    real, fake = real_and_stand_in
    assert real["version"].split(".")[0] == fake["version"].split(".")[0] == "14"
    assert fake["names"] == real["names"]
    assert real["names"]["cuda.nccl"] is False  # CuPy 14 does not import cupy.cuda.nccl with cupy
    assert fake["modules"] == real["modules"]
    assert fake["ndarray"] == real["ndarray"]
    assert fake["compute_types"] == real["compute_types"]


def test_the_stand_in_fails_where_cupy_fails_and_says_the_same(real_and_stand_in) -> None:
    real, fake = real_and_stand_in
    assert fake["messages"] == real["messages"]
    assert fake["nccl"] == real["nccl"]  # names and constants too, where NCCL is installed


def test_elementwise_kernels_get_cupys_source_text(real_and_stand_in) -> None:
    real, fake = real_and_stand_in
    calls = _calls()
    differ = [(c["name"], i) for i, (c, a, b) in enumerate(zip(calls, real["sources"], fake["sources"])) if a != b]
    assert not differ, f"{differ}: {real['sources'][differ[0][1]]}\n----\n{fake['sources'][differ[0][1]]}"
    assert len(real["sources"]) == len(calls) and all(real["sources"])


# --------------------------------------------------------------------------
# The stand-in's own rules
# --------------------------------------------------------------------------
def test_no_implicit_conversion_to_numpy_and_no_numpy_operands() -> None:
    with stand_in() as cp:
        x = cp.asarray(np.arange(6, dtype=np.float32))
        message = "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy " \
                  "array explicitly."
        for convert in (np.asarray, np.array, np.ascontiguousarray, lambda a: np.asarray(a, dtype=np.float64)):
            with pytest.raises(TypeError) as info:
                convert(x)
            assert str(info.value) == message
        with pytest.raises(TypeError, match="Only cupy arrays can be concatenated"):  # __array_function__
            np.concatenate([np.zeros(1), x])
        assert isinstance(np.sum(x), cp.ndarray) and isinstance(np.isfinite(x), cp.ndarray)  # handed to CuPy
        for bad in (lambda: x + np.ones(6, np.float32), lambda: np.ones(6, np.float32) * x,
                    lambda: cp.isfinite(np.ones(3)), lambda: cp.matmul(np.ones((2, 2)), np.ones((2, 2)))):
            with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
                bad()
        with pytest.raises(TypeError, match="expected cupy._core.core._ndarray_base, got numpy.ndarray"):
            cp.ascontiguousarray(np.ones(3))
        assert float(cp.sum(np.ones(3))) == 3.0  # CuPy's sum is a.sum(): NumPy input runs on the host


def test_host_synchronisations_are_counted_and_scalars_convert() -> None:
    with stand_in() as cp:
        x = cp.asarray(np.array([1.5, 2.5], np.float32))
        s = x.sum()
        cp._fake.reset_counts()
        y = (s * 2 + x).max()  # queued work: no synchronisation
        assert cp._fake.syncs == 0 and isinstance(y, cp.ndarray) and y.shape == ()
        assert float(s) == 4.0 and int(s) == 4 and bool(s) and f"{s:.1f}" == "4.0"
        assert cp._fake.syncs == 4
        with pytest.raises(ValueError, match="ambiguous"):
            bool(x)
        # a scalar stays 0-d, as in CuPy (only cupy.ascontiguousarray makes it (1,))
        assert cp.asarray(np.float32(3)).shape == () and cp.asarray(2.5).shape == () and cp.array(7).shape == ()


def test_fresh_device_memory_is_garbage_and_the_pool_has_a_limit() -> None:
    with stand_in() as cp:
        assert np.isnan(cp.empty(4, np.float32).get()).all()
        assert (cp.empty(3, np.int64).get() == -1).all() and (cp.zeros(3).get() == 0).all()
        pool = cp.get_default_memory_pool()
        before = pool.used_bytes()
        a = cp.empty(1000, np.float32)
        assert pool.used_bytes() - before == 4096  # 4000 bytes in 512-byte units
        del a
        assert pool.used_bytes() == before
        pool.set_limit(size=before + 4096)
        with pytest.raises(cp.cuda.memory.OutOfMemoryError, match=r"Out of memory allocating 8,192 bytes"):
            cp.empty(2048, np.float32)
        pool.set_limit(size=0)
        b = cp.empty(1000, np.float32)
        for make in (lambda: cp.zeros(1000, np.float32), lambda: cp.full_like(b, 2.0), lambda: b.astype(np.float64),
                     lambda: cp.ascontiguousarray(b[::2]), lambda: cp.asarray(np.ones(1000, np.float32))):
            before = pool.used_bytes()  # each allocation counted once, whichever routine makes it
            c = make()
            assert pool.used_bytes() - before == -(-c.nbytes // 512) * 512
            del c


def test_layouts_byte_order_and_copies_follow_cupy() -> None:
    """CuPy 14.2's _array_default, _astype and _new_like_order_and_strides (cupy/_core/core.pyx,
    cupy/_creation/basic.py): order 'K' or 'A' keeps a column-major array column-major, data reaches the
    device little-endian, and copy=None copies only where the dtype or the asked layout differs."""
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    with stand_in() as cp:
        f = cp.asarray(fortran)
        assert f.flags.f_contiguous and not f.flags.c_contiguous and f.get().tolist() == fortran.tolist()
        assert cp.asarray(fortran, order="C").flags.c_contiguous
        assert cp.asarray(np.arange(6.0).reshape(2, 3)).flags.c_contiguous
        assert cp.asarray([[1.0, 2.0], [3.0, 4.0]], order="K").flags.c_contiguous  # not an ndarray: row-major
        big = cp.asarray(np.arange(3.0, dtype=">f4"))
        assert big.dtype.str == "<f4" and big.get().tolist() == [0.0, 1.0, 2.0]
        assert cp.empty_like(f).flags.f_contiguous and cp.zeros_like(f, order="A").flags.f_contiguous
        assert cp.ones_like(f, order="C").flags.c_contiguous and cp.empty_like(f, shape=(6,)).shape == (6,)
        assert f.astype(np.float32).flags.f_contiguous and f.astype(np.float32, order="C").flags.c_contiguous
        assert cp.asarray(f) is f and f.astype(f.dtype, copy=False) is f
        assert cp.asarray(f, order="C") is not f and cp.array(f) is not f and cp.array(f).flags.f_contiguous
        with pytest.raises(ValueError, match="Unable to avoid copy"):
            cp.array(f, copy=False, order="C")
        with pytest.raises(TypeError, match="casting is not supported yet"):
            f.astype(np.float32, casting="unsafe")
        assert cp.asarray(np.float32(2)).shape == () and cp.array([[1, 2]], ndmin=3).shape == (1, 1, 2)


def test_integer_array_indices_wrap_around_as_in_cupy() -> None:
    with stand_in() as cp:
        x = cp.asarray(np.arange(5))
        assert x[cp.asarray(np.array([1, 6, -1]))].get().tolist() == [1, 1, 4]
        x[[0, 7]] = 9
        assert x.get().tolist() == [9, 1, 9, 3, 4]


def test_nccl_is_imported_on_demand_and_takes_byte_ids() -> None:
    with stand_in() as cp:
        assert not hasattr(cp.cuda, "nccl")
        from cupy.cuda import nccl

        uid = nccl.get_unique_id()
        assert isinstance(uid, bytes) and len(uid) == 128
        with pytest.raises(TypeError, match="expected bytes, got tuple"):
            nccl.NcclCommunicator(1, tuple(uid), 0)
        comm = nccl.NcclCommunicator(1, uid, 0)
        a = cp.asarray(np.arange(4, dtype=np.float32))
        comm.allReduce(a.data.ptr, a.data.ptr, a.size, nccl.NCCL_FLOAT32, nccl.NCCL_AVG, 0)
        assert a.get().tolist() == [0, 1, 2, 3]


def test_tf32_compute_type_rounds_float32_products() -> None:
    with stand_in() as cp:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((64, 64)).astype(np.float32)
        exact = a.astype(np.float64) @ b
        linalg = cp._core._routines_linalg
        fp32 = (cp.asarray(a) @ cp.asarray(b)).get()
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
        tf32 = (cp.asarray(a) @ cp.asarray(b)).get()
        scale = np.abs(exact).max()
        assert np.abs(fp32 - exact).max() / scale < 1e-6 < np.abs(tf32 - exact).max() / scale < 5e-3


# --------------------------------------------------------------------------
# The kernels run, from the text CuPy would compile, and equal their NumPy bodies
# --------------------------------------------------------------------------
def _pair(cp: Any, a: np.ndarray) -> tuple[np.ndarray, Any]:
    return a.copy(), cp.asarray(a)


@needs_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_kernels_equal_their_numpy_bodies(dtype: str) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((33, 40)).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    d = rng.standard_normal((33, 40)).astype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-13
    kinds = kernels.ACTIVATIONS if dtype == "float32" else ("relu", "sigmoid")
    with stand_in() as cp:
        for kind in kinds:
            zh, zd = _pair(cp, z)
            kernels.bias_activation(zh, b, kind, 0.02)
            kernels.bias_activation(zd, cp.asarray(b), kind, 0.02)
            np.testing.assert_allclose(zd.get(), zh, rtol=tol, atol=tol, err_msg=f"bias_{kind}_fwd")
            if kind != "identity":
                kernels.bias_activation(zh, None, kind, 0.02)
                kernels.bias_activation(zd, None, kind, 0.02)
                np.testing.assert_allclose(zd.get(), zh, rtol=tol, atol=tol, err_msg=f"{kind}_fwd")
            dh, dd = _pair(cp, d)
            kernels.activation_backward(dh, zh, kind, 0.02)
            kernels.activation_backward(dd, zd, kind, 0.02)
            np.testing.assert_allclose(dd.get(), dh, rtol=tol, atol=tol, err_msg=f"{kind}_bwd")


@needs_compiler
def test_update_random_batchnorm_and_gather_kernels_equal_their_numpy_bodies() -> None:
    rng = np.random.default_rng(1)
    n, n_decay = 1000, 600
    p, g, v, m = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    v2 = np.abs(rng.standard_normal(n)).astype(np.float32)
    with stand_in() as cp:
        for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
            ph, pd = _pair(cp, p)
            vh, vd = (None, None) if not momentum else _pair(cp, v)
            kw = {"lr": 0.1, "momentum": momentum, "weight_decay": 0.01, "nesterov": nesterov, "n_decay": n_decay}
            kernels.sgd_update(ph, g, vh, np.empty_like(p), **kw)
            kernels.sgd_update(pd, cp.asarray(g), vd, cp.empty_like(pd), **kw)
            np.testing.assert_allclose(pd.get(), ph, rtol=1e-6, atol=1e-6)
            if momentum:
                np.testing.assert_allclose(vd.get(), vh, rtol=1e-6, atol=1e-6)
        for decoupled in (False, True):
            ph, pd = _pair(cp, p)
            mh, md = _pair(cp, m)
            vh, vd = _pair(cp, v2)
            kw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "decoupled": decoupled,
                  "step": 3, "n_decay": n_decay}
            kernels.adam_update(ph, g, mh, vh, np.empty_like(p), **kw)
            kernels.adam_update(pd, cp.asarray(g), md, vd, cp.empty_like(pd), **kw)
            for a, b in ((pd, ph), (md, mh), (vd, vh)):
                np.testing.assert_allclose(a.get(), b, rtol=2e-6, atol=1e-7)
        assert (kernels.hash_uniform(cp, 777, 5, 3).get() == kernels.hash_uniform(np, 777, 5, 3)).all()
        assert (kernels.random_permutation(cp, 777, 5, 3).get() == kernels.random_permutation(np, 777, 5, 3)).all()
        x = rng.standard_normal((40, 30)).astype(np.float32)
        xh, xd = _pair(cp, x)
        mask_h, mask_d = np.empty_like(x), cp.empty(x.shape, np.float32)
        kernels.dropout_forward(xh, 0.3, 7, 2, mask_h)
        kernels.dropout_forward(xd, 0.3, 7, 2, mask_d)
        np.testing.assert_array_equal(mask_d.get(), mask_h)
        np.testing.assert_allclose(xd.get(), xh, rtol=1e-6)
        mean, inv, gamma, beta = (rng.standard_normal(30).astype(np.float32) for _ in range(4))
        outs_h = [np.empty_like(x) for _ in range(2)]
        outs_d = [cp.empty(x.shape, np.float32) for _ in range(2)]
        kernels.batchnorm_normalize(x, mean, inv, gamma, beta, *outs_h)
        kernels.batchnorm_normalize(cp.asarray(x), *(cp.asarray(a) for a in (mean, inv, gamma, beta)), *outs_d)
        for a, b in zip(outs_d, outs_h):
            np.testing.assert_allclose(a.get(), b, rtol=1e-6, atol=1e-6)
        dy = rng.standard_normal((40, 30)).astype(np.float32)
        dx_h, dx_d = np.empty_like(x), cp.empty(x.shape, np.float32)
        kernels.batchnorm_backward(dy, outs_h[0], gamma, mean, beta, 40, dx_h)
        kernels.batchnorm_backward(cp.asarray(dy), outs_d[0], *(cp.asarray(a) for a in (gamma, mean, beta)), 40, dx_d)
        np.testing.assert_allclose(dx_d.get(), dx_h, rtol=1e-5, atol=1e-6)
        data = rng.integers(0, 256, (50, 2 * 30), dtype=np.uint8)
        rows = rng.integers(0, 50, 2 * 17)
        data_d, rows_d = cp.asarray(data), cp.asarray(rows)
        for pick_src, pick_rows in ((np.s_[:, :30], np.s_[:17]), (np.s_[:, ::2], np.s_[::2])):  # strided views too
            out_h, out_d = np.empty((17, 30), np.float32), cp.empty((17, 30), np.float32)
            kernels.gather_scale(data[pick_src], rows[pick_rows], 1 / 255, out_h)
            kernels.gather_scale(data_d[pick_src], rows_d[pick_rows], 1 / 255, out_d)
            np.testing.assert_allclose(out_d.get(), out_h, rtol=1e-6)


@needs_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_kernel_equals_its_numpy_body(dtype: str) -> None:
    rng = np.random.default_rng(2)
    z = (3 * rng.standard_normal((37, 11))).astype(dtype)
    labels = rng.integers(0, 11, 37)
    targets = rng.dirichlet(np.ones(11), 37).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    with stand_in() as cp:
        for lab, tgt in ((labels, None), (None, targets)):
            for grad in (True, False):
                dz_h = np.empty_like(z) if grad else None
                dz_d = cp.empty(z.shape, dtype) if grad else None
                rows_h, rows_d = np.empty(37, dtype), cp.empty(37, dtype)
                kernels.softmax_cross_entropy(z, lab, tgt, dz_h, rows_h)
                kernels.softmax_cross_entropy(cp.asarray(z), None if lab is None else cp.asarray(lab),
                                              None if tgt is None else cp.asarray(tgt), dz_d, rows_d)
                np.testing.assert_allclose(rows_d.get(), rows_h, rtol=tol, atol=tol)
                if grad:
                    np.testing.assert_allclose(dz_d.get(), dz_h, rtol=tol, atol=tol)
        np.testing.assert_allclose(kernels.softmax(cp.asarray(z)).get(), kernels.softmax(z), rtol=tol)


@needs_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_count_correct_kernel_equals_its_numpy_body(dtype: str, logits_to_classify) -> None:
    rng = np.random.default_rng(3)
    with stand_in() as cp:
        for c in (1, 2, 10):
            z, labels = logits_to_classify(rng, 300, c, dtype)
            into_h, into_d = np.array(3, np.int64), cp.full((), 3, cp.int64)
            for threshold in (0.0, 0.3):  # (one output: class 1 above it)
                kernels.count_correct(z, labels, into_h, threshold)
                kernels.count_correct(cp.asarray(z), cp.asarray(labels), into_d, threshold)
            assert int(into_d) == int(into_h) > 3 + 2 * 50, c


def test_the_project_kernels_source_is_what_the_registry_holds() -> None:
    """The stand-in compiles exactly the registry's text (nothing substituted by the tests but T's typedef)."""
    with stand_in() as cp:
        k = _cuda.elementwise("bias_relu_fwd")
        assert isinstance(k, cp.ElementwiseKernel) and k.operation == _cuda.ELEMENTWISE["bias_relu_fwd"][2]
        r = _cuda.raw("softmax_xent", np.float32)
        assert _cuda.RAW["softmax_xent"].replace("KERNEL_NAME", "softmax_xent_float") in r.code


def test_a_process_gets_the_stand_in_from_the_module_runner(tmp_path: Path) -> None:
    script = tmp_path / "which.py"
    script.write_text("import sys, cupy\nprint(cupy.__file__, cupy.cuda.runtime.getDeviceCount(), sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-m", "fakecupy", str(script), "x"], capture_output=True, text=True,
                          env=subprocess_env(FAKECUPY_DEVICES="2"), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fakecupy" in proc.stdout and proc.stdout.split()[1:] == ["2", "['x']"]
