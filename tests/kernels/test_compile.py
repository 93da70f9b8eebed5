"""Every kernel compiled with NVRTC for an H100 (sm_90) exactly as CuPy 14.2 compiles it, with no GPU.

The compiling is :func:`gpu_backprop.tools.doctor.compile_all` — the code that
``gpu-backprop doctor`` runs — so the test and the doctor cannot drift apart:
CuPy's own code generator makes the elementwise kernels' text for arguments
shaped like the library's calls, raw kernels are the very ``cupy.RawKernel``
objects the library builds, and the NVRTC options are CuPy's. It needs CuPy,
NVRTC and the CUDA headers (the ``test`` extra installs them on Linux x86-64:
``cupy-cuda13x``, ``nvidia-cuda-nvrtc``, ``nvidia-cuda-runtime``); a GPU is not needed.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_backprop import kernels
from gpu_backprop.kernels import _cuda
from gpu_backprop.tools import doctor

PROBLEM = doctor.toolchain_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None,
                           reason=f"needs CuPy and NVRTC (the test extra brings them on Linux x86-64): {PROBLEM}")

ARCH = "90"  # H100


@pytest.fixture(scope="module")
def builds() -> list[doctor.Build]:
    return doctor.compile_all(ARCH)


def test_every_kernel_compiles_for_sm_90(builds: list[doctor.Build]) -> None:
    failed = [f"{b.kernel} [{b.dtype}]: {doctor.first_error(b.log)}" for b in builds if not b.ok]
    assert failed == []


def test_softmax_cross_entropy_compiles_for_float_and_double(builds: list[doctor.Build]) -> None:
    # the casts (T)0 / (T)1 once survived a text substitution of "T " and "T*": 'identifier "T" is undefined'
    got = {b.dtype: (b.ok, doctor.first_error(b.log) if b.log else "") for b in builds if b.kernel == "softmax_xent"}
    assert got == {"float32": (True, ""), "float64": (True, "")}


def test_every_registered_kernel_is_compiled_for_the_types_the_library_uses(builds: list[doctor.Build]) -> None:
    floats = ("float32", "float64")
    want = {(name, t) for name in _cuda.ELEMENTWISE for t in floats if name not in ("hash_u32", "gather_scale")}
    want |= {("hash_u32", "uint32")}  # no element type
    want |= {("gather_scale", f"{s}->{t}") for t in floats for s in ("uint8", t)}  # uint8 images or float features
    want |= {("gather_scale", f"uint8->{t}, 64-bit index") for t in floats}  # a data set over 2 GiB
    want |= {(name, t) for name in _cuda.RAW for t in floats}
    want |= {(f"per_sample_sgd {m}", d) for m in ("mlp-256", "mlp-1024")
             for d in ("float32, uint8 data", "float32, float32 data", "float64, float64 data")}
    got = [(b.kernel, b.dtype) for b in builds]
    assert len(got) == len(set(got))
    assert set(got) == want  # a new kernel needs its call in doctor._call_sites (else: "generic arguments")
    assert {f"{kind}_fwd" for kind in kernels.ACTIVATIONS} <= {k for k, _ in got}


def test_a_kernel_that_does_not_compile_is_reported_with_its_nvrtc_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_cuda.RAW, "broken", 'extern "C" __global__ void KERNEL_NAME(T* x) { x[0] = y; }\n')
    builds = doctor.compile_all(ARCH)
    broken = [b for b in builds if b.kernel == "broken"]
    assert [(b.dtype, b.ok) for b in broken] == [("float32", False), ("float64", False)]
    assert doctor.first_error(broken[0].log) == 'line 2: error: identifier "y" is undefined'
    assert all(b.ok for b in builds if b.kernel != "broken")


def test_raw_kernels_are_built_from_the_library_source_with_t_declared() -> None:
    src = _cuda.raw_source("softmax_xent", np.float64)
    assert src.startswith("typedef double T;\n")
    assert "void softmax_xent_double(" in src and "KERNEL_NAME" not in src
    with pytest.raises(TypeError, match="takes float32 or float64 elements, not int64"):
        _cuda.raw_source("softmax_xent", np.int64)


def test_elementwise_text_is_cupys_for_a_bias_broadcast_over_rows() -> None:
    # the source CuPy 14.2 generates for ElementwiseKernel("T b, T alpha", "T x", ...)(b, 0.01, x) with
    # x float32 (64, 100) and b (100,): b keeps two axes (stride 0 over rows), alpha is passed by value
    import cupy

    k = _cuda.make_elementwise(cupy, "bias_relu_fwd")
    x, b = doctor._array(cupy, (64, 100), np.float32), doctor._array(cupy, (100,), np.float32)
    src = doctor._elementwise_code(cupy, k, (b, 0.01, x))
    assert src.startswith("#include <cupy/complex.cuh>\n#include <cupy/carray.cuh>\n")
    assert ("void bias_relu_fwd(const CArray<float, 2, 0, 1> _raw_b, const float alpha, "
            "CArray<float, 2, 1, 1> _raw_x, CIndexer<2, 1> _ind)") in src
    assert "typedef float T;" in src and "const T &b = _raw_b[_ind.get()];" in src
    same_shape = doctor._elementwise_code(cupy, _cuda.make_elementwise(cupy, "relu_bwd"), (x, 0.01, x))
    assert "CArray<float, 1, 1, 1> _raw_d, CIndexer<1, 1> _ind)" in same_shape  # contiguous: one axis
