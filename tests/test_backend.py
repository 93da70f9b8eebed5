"""Backend choice, clear errors where CuPy cannot run, moving arrays, mixed devices."""

from __future__ import annotations

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop import backend, devices


def test_numpy_backend_and_info() -> None:
    be = gb.get_backend("numpy")
    assert be.name == "numpy" and be.xp is np and not be.is_gpu
    info = gb.backend_info("numpy")
    assert info["backend"] == "numpy" and "CPU" in info["device"]


def test_auto_says_what_it_chose_and_why() -> None:
    info = gb.backend_info("auto")
    assert info["backend"] in ("numpy", "cupy")
    assert info["reason"].startswith("auto:")
    if info["backend"] == "numpy":
        assert "CuPy" in info["reason"]  # one sentence that says why not CuPy


def test_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_BACKPROP_BACKEND", "numpy")
    assert gb.get_backend().name == "numpy"
    monkeypatch.setenv("GPU_BACKPROP_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"unknown backend 'tpu' \(from \$GPU_BACKPROP_BACKEND\)"):
        gb.get_backend()


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="choose one of auto, numpy, cupy"):
        gb.get_backend("cuda")


@pytest.mark.skipif(backend.cupy_available(), reason="a CUDA device is present")
def test_asking_for_cupy_without_a_device_is_one_clear_sentence() -> None:
    with pytest.raises(gb.BackendError) as info:
        gb.get_backend("cupy")
    text = str(info.value)
    assert "\n" not in text and "backend='numpy'" in text


class _FakeCupyArray:
    """Looks like a CuPy array to the device checks, without needing CuPy."""

    __module__ = "cupy._core.core"

    class device:  # noqa: N801 - mimics cupy's attribute
        id = 0


def test_mixed_devices_name_the_argument() -> None:
    net = gb.MLP([3, 2], backend="numpy")
    with pytest.raises(TypeError, match=r"mixed devices: .* X is a CuPy array on GPU 0"):
        net.loss_and_grads(_FakeCupyArray(), np.array([0]))
    with pytest.raises(TypeError, match=r"y is a CuPy array"):
        net.loss_and_grads(np.zeros((1, 3), np.float32), _FakeCupyArray())


class _DLPackOnly:
    """An object that only speaks DLPack (as a PyTorch or JAX tensor does)."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_to_device_takes_dlpack_without_a_copy() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = gb.to_device(_DLPackOnly(a), "numpy")
    assert isinstance(b, np.ndarray) and np.shares_memory(a, b)
    np.testing.assert_array_equal(gb.to_numpy(_DLPackOnly(a)), a)


def test_to_device_and_to_numpy_round_trip() -> None:
    a = [[1, 2], [3, 4]]
    b = gb.to_device(a, "numpy", dtype=np.float32)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(gb.to_numpy(b), np.array(a, dtype=np.float32))
    assert gb.get_array_module(b) is np


@pytest.mark.gpu
def test_cupy_round_trip_and_array_module() -> None:
    be = gb.get_backend("cupy")
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    d = gb.to_device(a, be)
    assert gb.get_array_module(d) is be.xp
    np.testing.assert_array_equal(gb.to_numpy(d), a)
    assert gb.to_device(d, be) is d or gb.to_device(d, be).data.ptr == d.data.ptr  # no copy


def test_only_the_backend_imports_cupy() -> None:
    import pathlib
    import re

    pkg = pathlib.Path(gb.__file__).parent
    importers = [p.name for p in pkg.rglob("*.py")  # the doctor and the device settings ask the backend (cupy_part)
                 if re.search(r"^\s*(import cupy|from cupy)", p.read_text(), re.M)]
    assert importers == ["backend.py"]


def test_tf32_switch_is_recorded_for_the_next_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert not devices.tf32_enabled()
    devices.set_tf32(True)
    assert devices.tf32_enabled() and __import__("os").environ["CUPY_TF32"] == "1"
    devices.set_tf32(False)
    assert not devices.tf32_enabled()


def test_the_moved_settings_are_still_found_in_the_backend() -> None:
    from gpu_backprop import checks
    from gpu_backprop.backend import tf32_enabled  # noqa: F401 - a from-import finds a moved name too

    for name in ("use_device", "backend_info", "set_tf32", "tf32_enabled", "cupy_nccl"):
        assert getattr(backend, name) is getattr(devices, name) and name not in backend.__all__
    assert backend.check_same_device is checks.check_same_device and gb.backend_info is devices.backend_info
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        backend.nothing_here  # noqa: B018


@pytest.mark.gpu
def test_tf32_changes_float32_products_by_about_1e_3_at_most() -> None:
    cp = backend.cupy_module()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    try:
        devices.set_tf32(True)
        tf32 = (cp.asarray(a) @ cp.asarray(b)).get()
    finally:
        devices.set_tf32(False)
    fp32 = (cp.asarray(a) @ cp.asarray(b)).get()
    scale = np.abs(exact).max()
    assert np.abs(fp32 - exact).max() / scale < 1e-5
    assert np.abs(tf32 - exact).max() / scale < 5e-3


def test_a_pytorch_tensor_is_shared_not_copied() -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (it is only a peer, never a dependency)")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = gb.to_device(t, "numpy")
    t[0, 0] = 42.0
    assert a[0, 0] == 42.0 and a.shape == (3, 4)
    net = gb.MLP([4, 2], backend="numpy")
    loss, _ = net.loss_and_grads(t, torch.tensor([0, 1, 1]))
    assert np.isfinite(loss)


class _GradTensor:
    """What PyTorch's tensor does with ``requires_grad=True``: DLPack refuses to export it."""

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU

    def __dlpack__(self, **kwargs: object) -> object:
        raise BufferError("Can't export tensors that require gradient, use tensor.detach()")


def test_a_tensor_that_requires_gradients_is_one_sentence() -> None:
    with pytest.raises(TypeError, match=r"refused to be shared .* pass tensor.detach\(\)"):
        gb.to_device(_GradTensor(), "numpy")
    net = gb.MLP([3, 2], backend="numpy")
    with pytest.raises(TypeError, match="detach"):
        net.predict_proba(_GradTensor())


def test_a_real_pytorch_tensor_that_requires_gradients_is_one_sentence() -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (it is only a peer, never a dependency)")
    t = torch.ones((2, 3), requires_grad=True)
    with pytest.raises(TypeError, match="tensor.detach"):
        gb.to_device(t, "numpy")
    np.testing.assert_array_equal(gb.to_device(t.detach(), "numpy"), np.ones((2, 3)))


def test_cupy_arrays_are_told_by_their_class_once_it_is_known() -> None:
    """``is_cupy_array`` asks an array's ``device`` once per class (it makes an object each time), then
    answers from the class; NumPy arrays and CuPy's other objects are never taken for CuPy arrays."""
    asked = []

    class Array:  # a class of CuPy's, as is_cupy_array sees one
        @property
        def device(self) -> int:
            asked.append(self)
            return 0

    class Other:  # CuPy's, without a device
        pass

    Array.__module__ = Other.__module__ = "cupy._test"
    a, b = Array(), Array()
    assert backend.is_cupy_array(a) and backend.is_cupy_array(b) and backend.is_cupy_array(a)
    assert asked == [a]
    assert not backend.is_cupy_array(Other()) and not backend.is_cupy_array(Other())
    assert not backend.is_cupy_array(np.zeros(2)) and not backend.is_cupy_array(np.float32(1))
