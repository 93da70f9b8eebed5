"""The GPU fast path without a GPU: the fused per-sample kernel, the launch budget.

The fused per-sample kernel is checked three ways here:
* its NumPy reference equals the general path (``train_step_grads`` + ``SGD.step`` per sample);
* its CUDA source compiles with ``nvcc`` for sm_90;
* its CUDA source *runs on the CPU*: compiled with g++ against a small emulation of the CUDA
  features it uses (one std::thread per CUDA thread, std::barrier for ``__syncthreads`` and for
  warp shuffles, std::atomic_ref for atomics), with real concurrency, and compared with the
  reference. What the emulation cannot show is the GPU's memory model (L1 caching across SMs)
  and speed: the GPU tests at the end do, on a CUDA machine.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop import backend, kernels
from gpu_backprop.experimental import launches, persample
from gpu_backprop.experimental.persample import PerSampleUnsupported, per_sample_sgd, per_sample_sgd_reference

NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")

OPTIMIZERS = {  # name -> (momentum, nesterov, weight_decay)
    "plain": (0.0, False, 0.0),
    "momentum+decay": (0.9, False, 0.01),
    "nesterov+decay": (0.9, True, 0.001),
}


def _data(rng: np.random.Generator, n: int, d: int, classes: int, kind: str, dtype: str = "float32"):
    """Data that is never all zeros: uint8 images with some blank columns, or float features."""
    if kind == "uint8":
        X = rng.integers(0, 256, (n, d), dtype=np.uint8)
        X[:, : d // 4] = 0  # blank pixels, as in MNIST (the kernel skips zero inputs in the forward)
        return X, rng.integers(0, classes, n), 1 / 255
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, classes, n), 1.0


def _pair(sizes, activation, dtype, opt_name, seed=3):
    mu, nesterov, wd = OPTIMIZERS[opt_name]
    a = gb.MLP(sizes, activation=activation, dtype=dtype, backend="numpy", seed=seed)
    b = a.copy()
    return (a, gb.SGD(a, lr=0.05, momentum=mu, nesterov=nesterov, weight_decay=wd),
            b, gb.SGD(b, lr=0.05, momentum=mu, nesterov=nesterov, weight_decay=wd))


def _general_path(net, opt, X, y, order, scale, lrs=None):
    """The specification: ``net.train_step_grads(x_i[None], y_i[None]); opt.step()`` per sample."""
    loss_sum, correct = 0.0, 0
    for k, row in enumerate(order):
        x = X[row:row + 1].astype(net.dtype)
        if scale != 1.0:
            x *= scale
        if lrs is not None:
            opt.lr = float(lrs[k])
        loss_sum += float(net.train_step_grads(x, y[row:row + 1]))
        correct += int(net.last_output.argmax() == y[row])
        opt.step()
    return loss_sum, correct


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------
# The NumPy reference is the general path, sample by sample
# --------------------------------------------------------------------------
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_reference_equals_the_general_path(dtype, tol, activation, opt_name, rng) -> None:
    X, y, scale = _data(rng, 40, 12, 5, "uint8")
    order = rng.permutation(40)[:25]
    a, oa, b, ob = _pair([12, 9, 7, 5], activation, dtype, opt_name)
    loss, correct = per_sample_sgd_reference(a, oa, X, y, order, scale=scale)
    loss_ref, correct_ref = _general_path(b, ob, X, y, order, scale)
    assert _rel(a.flat_params, b.flat_params) < tol
    if ob.velocity is not None:
        assert _rel(oa.velocity, ob.velocity) < tol
    assert float(loss) == pytest.approx(loss_ref, rel=tol)
    assert int(correct) == correct_ref
    assert oa.steps == ob.steps == 25
    assert not np.array_equal(a.flat_params, gb.MLP([12, 9, 7, 5], activation=activation, dtype=dtype,
                                                     seed=3).flat_params)  # it did train


def test_reference_takes_float_data_and_one_rate_per_sample(rng) -> None:
    X, y, scale = _data(rng, 30, 8, 4, "float", "float64")
    order = rng.integers(0, 30, 20)  # repeats allowed
    rates = rng.uniform(0.01, 0.2, 20)
    a, oa, b, ob = _pair([8, 16, 4], "tanh", "float64", "nesterov+decay")
    per_sample_sgd_reference(a, oa, X, y, order, lr=rates)
    _general_path(b, ob, X, y, order, scale, lrs=rates)
    assert _rel(a.flat_params, b.flat_params) < 1e-10


def test_per_sample_sgd_on_numpy_runs_the_general_path(rng) -> None:
    X, y, scale = _data(rng, 50, 10, 3, "uint8")
    order = rng.permutation(50)
    a, oa, b, ob = _pair([10, 12, 3], "relu", "float64", "momentum+decay")
    loss, correct = per_sample_sgd(a, oa, X, y, order, scale=scale)  # auto: the general path on NumPy
    loss_ref, correct_ref = per_sample_sgd_reference(b, ob, X, y, order, scale=scale)
    assert _rel(a.flat_params, b.flat_params) < 1e-10
    assert float(loss) == pytest.approx(float(loss_ref), rel=1e-10) and int(correct) == int(correct_ref)
    assert oa.lr == 0.05  # restored after the run


@pytest.mark.parametrize("make,match", [
    (lambda: gb.Sequential([gb.Dense(4, 5), gb.BatchNorm(5), gb.ReLU(), gb.Dense(5, 3)]), "Dense layers"),
    (lambda: gb.MLP([4, 5, 3], loss="mse"), "softmax cross-entropy"),
    (lambda: gb.MLP([4, 3]), "hidden layer"),
])
def test_networks_the_kernel_does_not_implement_are_named(make, match) -> None:
    net = make()
    with pytest.raises(PerSampleUnsupported, match=match):
        persample.layer_specs(net)
    assert not persample.can_fuse(net, gb.SGD(net))
    assert persample.can_fuse(gb.MLP([4, 5, 3]), gb.SGD(gb.MLP([4, 5, 3]))) is False  # an optimiser of another net
    other = gb.MLP([4, 5, 3])
    assert persample.can_fuse(other, gb.SGD(other))


def test_bad_arguments_get_one_sentence(rng) -> None:
    net = gb.MLP([6, 5, 3], backend="numpy")
    opt = gb.SGD(net, lr=0.1)
    X, y, _ = _data(rng, 10, 6, 3, "uint8")
    order = np.arange(10)
    with pytest.raises(PerSampleUnsupported, match="SGD"):
        per_sample_sgd_reference(net, gb.Adam(net), X, y, order)
    with pytest.raises(TypeError, match="SGD optimizer"):
        per_sample_sgd(net, gb.Adam(net), X, y, order)
    with pytest.raises(backend.BackendError, match="CuPy"):
        per_sample_sgd(net, opt, X, y, order, method="kernel")
    with pytest.raises(ValueError, match="unknown method"):
        per_sample_sgd(net, opt, X, y, order, method="fast")
    with pytest.raises(TypeError, match="uint8"):
        per_sample_sgd(net, opt, X.astype(np.int32), y, order)
    with pytest.raises(ValueError, match="order must be"):
        per_sample_sgd(net, opt, X, y, order.astype(np.float32))
    with pytest.raises(ValueError, match="rows 0..12"):
        per_sample_sgd(net, opt, X, y, np.array([0, 12]), check=True)
    with pytest.raises(ValueError, match="3 rates for 10 samples"):
        per_sample_sgd(net, opt, X, y, order, lr=np.ones(3))


# --------------------------------------------------------------------------
# The CUDA source: nvcc compiles it, and it runs on the CPU under emulation
# --------------------------------------------------------------------------
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("sizes,dtype,x_dtype", [([784, 256, 256, 10], "float32", "uint8"),
                                                 ([20, 33, 17, 40], "float64", "float64")])
def test_kernel_source_compiles_with_nvcc(sizes, dtype, x_dtype, tmp_path: Path) -> None:
    net = gb.MLP(sizes, activation="sigmoid", dtype=dtype, backend="numpy")
    cu = tmp_path / "per_sample.cu"
    cu.write_text(persample.kernel_source(net, x_dtype))
    proc = subprocess.run([NVCC, "-c", "-arch=sm_90", "-o", str(tmp_path / "k.o"), str(cu)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


HOST_PRELUDE = r"""
// The CUDA features the fused kernel uses, on the CPU: one std::thread per CUDA thread,
// std::barrier per block (__syncthreads) and per warp (shuffles: write, wait, read, wait).
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
using std::exp; using std::log; using std::tanh;

struct Dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;
struct WarpSync { std::barrier<> bar{32}; unsigned long long slot[32]; };
static thread_local std::barrier<>* t_block_bar;
static thread_local WarpSync* t_warp;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __constant__ static

inline void __syncthreads() { t_block_bar->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int mask) {
    const int lane = threadIdx.x & 31;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    t_warp->slot[lane] = bits;
    t_warp->bar.arrive_and_wait();
    const unsigned long long other = t_warp->slot[lane ^ mask];
    t_warp->bar.arrive_and_wait();
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}
template <class T> T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <class T> T __ldcg(const T* p) { return std::atomic_ref<T>(*const_cast<T*>(p)).load(); }
inline long long clock64() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
}
#define VOLATILE_LOAD(p) (std::atomic_ref<unsigned int>(*const_cast<unsigned int*>(p)).load())
#define VOLATILE_LOAD_INT(p) (std::atomic_ref<int>(*const_cast<int*>(p)).load())
#define SPIN_PAUSE() std::this_thread::yield()
#define SPIN_LIMIT 60000000000LL
"""

HOST_LAUNCHER = r"""
extern "C" void emulate(int grid, int block, real* params, real* velocity, const xin_t* X, const long long* labels,
                        const long long* order, long long n, real scale, real lr, const real* lrs, int use_lrs,
                        real mu, real wd, long long n_decay, int momentum, int nesterov, real* scratch,
                        unsigned int* barrier, int* err, double* loss_out, long long* correct_out) {
    gridDim.x = grid;
    blockDim.x = block;
    std::vector<std::unique_ptr<std::barrier<>>> blocks;
    std::vector<std::unique_ptr<WarpSync>> warps;
    for (int b = 0; b < grid; ++b) blocks.push_back(std::make_unique<std::barrier<>>(block));
    for (int w = 0; w < grid * block / 32; ++w) warps.push_back(std::make_unique<WarpSync>());
    std::vector<std::thread> threads;
    for (int b = 0; b < grid; ++b)
        for (int t = 0; t < block; ++t)
            threads.emplace_back([=, &blocks, &warps] {
                threadIdx.x = t;
                blockIdx.x = b;
                t_block_bar = blocks[b].get();
                t_warp = warps[(b * block + t) / 32].get();
                per_sample_sgd(params, velocity, X, labels, order, n, scale, lr, lrs, use_lrs, mu, wd, n_decay,
                               momentum, nesterov, scratch, barrier, err, loss_out, correct_out);
            });
    for (auto& th : threads) th.join();
}
"""


def _build_emulator(net, x_dtype: str, tmp_path: Path) -> ctypes.CDLL:
    src = tmp_path / "emulated.cpp"
    src.write_text(HOST_PRELUDE + persample.kernel_source(net, x_dtype) + HOST_LAUNCHER)
    lib = tmp_path / "emulated.so"
    proc = subprocess.run([GXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-x", "c++", str(src),
                           "-o", str(lib)], check=False, capture_output=True, text=True, timeout=300)
    if proc.returncode and "barrier" in proc.stderr and "No such file" in proc.stderr:
        pytest.skip("this g++ has no C++20 <barrier>")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ctypes.CDLL(str(lib))


def _emulate(lib, net, opt, X, y, order, scale, grid, block, lrs=None):
    """Run the kernel source on the CPU as a grid of ``grid`` blocks of ``block`` threads."""
    real = ctypes.c_float if net.dtype == np.float32 else ctypes.c_double
    scratch = np.full(persample.scratch_size(net), np.nan, net.dtype)  # poisoned: must be written before read
    state, err = np.zeros(2, np.uint32), np.zeros(1, np.int32)
    loss, correct = np.full(1, np.nan), np.full(1, -1, np.int64)
    v = opt.velocity if opt.velocity is not None else np.zeros(1, net.dtype)
    rates = np.asarray(lrs, net.dtype) if lrs is not None else np.zeros(1, net.dtype)
    order, y = np.ascontiguousarray(order, np.int64), np.ascontiguousarray(y, np.int64)

    def p(a):
        return ctypes.c_void_p(a.ctypes.data)

    lib.emulate(ctypes.c_int(grid), ctypes.c_int(block), p(net.flat_params), p(v), p(X), p(y), p(order),
                ctypes.c_longlong(len(order)), real(scale), real(opt.lr), p(rates), ctypes.c_int(lrs is not None),
                real(opt.momentum), real(opt.weight_decay), ctypes.c_longlong(net.n_decay),
                ctypes.c_int(opt.velocity is not None), ctypes.c_int(opt.nesterov), p(scratch), p(state), p(err),
                p(loss), p(correct))
    opt.steps += len(order)
    return float(loss[0]), int(correct[0]), int(err[0]), state


EMULATED = [  # sizes, activation, dtype, data, optimiser, grid, block, per-sample rates
    ([20, 40, 33, 5], "tanh", "float64", "uint8", "momentum+decay", 2, 64, False),
    ([20, 70, 5], "relu", "float64", "uint8", "plain", 1, 32, False),            # one warp does everything
    ([20, 70, 33, 40], "sigmoid", "float64", "float", "nesterov+decay", 3, 96, True),  # 40 classes > 32 lanes
    ([30, 16, 16, 16, 12], "leaky_relu", "float32", "uint8", "momentum+decay", 2, 64, False),
]


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
@pytest.mark.parametrize("sizes,activation,dtype,data,opt_name,grid,block,rates", EMULATED)
def test_kernel_source_run_on_the_cpu_equals_the_reference(sizes, activation, dtype, data, opt_name, grid, block,
                                                           rates, tmp_path: Path, rng) -> None:
    X, y, scale = _data(rng, 30, sizes[0], sizes[-1], data, dtype)
    order = rng.integers(0, 30, 12)
    lrs = rng.uniform(0.01, 0.1, 12) if rates else None
    a, oa, b, ob = _pair(sizes, activation, dtype, opt_name, seed=4)
    lib = _build_emulator(a, "uint8" if data == "uint8" else dtype, tmp_path)
    loss, correct, err, state = _emulate(lib, a, oa, X, y, order, scale, grid, block, lrs)
    loss_ref, correct_ref = per_sample_sgd_reference(b, ob, X, y, order, scale=scale, lr=lrs)
    assert err == 0
    layers = len(sizes) - 1
    assert state[0] == 0 and state[1] == 2 + len(order) * (2 * layers - 1)  # every barrier passed, count reset
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert _rel(a.flat_params, b.flat_params) < tol
    if ob.velocity is not None:
        assert _rel(oa.velocity, ob.velocity) < tol
    assert loss == pytest.approx(float(loss_ref), rel=tol)
    assert correct == int(correct_ref)


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
def test_emulated_kernel_keeps_the_barrier_usable_across_launches(tmp_path: Path, rng) -> None:
    """Two launches of 5 samples on the same barrier state equal one launch of 10 samples."""
    X, y, scale = _data(rng, 20, 12, 4, "uint8")
    order = rng.permutation(20)[:10]
    a, oa, b, ob = _pair([12, 24, 4], "relu", "float32", "momentum+decay")
    lib = _build_emulator(a, "uint8", tmp_path)
    _emulate(lib, a, oa, X, y, order[:5], scale, 2, 64)
    _emulate(lib, a, oa, X, y, order[5:], scale, 2, 64)
    per_sample_sgd_reference(b, ob, X, y, order, scale=scale)
    assert _rel(a.flat_params, b.flat_params) < 1e-5


# --------------------------------------------------------------------------
# Launch counting on the CPU
# --------------------------------------------------------------------------
def test_trace_counts_what_cupy_would_launch() -> None:
    def step():
        a = np.zeros(8, np.float32)          # memset
        b = np.empty(8, np.float32)          # allocation only
        b[...] = 2.0                         # fill
        a += b                               # elementwise, in place
        s = (a * b).sum()                    # elementwise + reduction, two allocations
        z = np.empty((2, 3), np.float32)
        kernels.bias_activation(z, np.ones(3, np.float32), "relu")  # one named kernel, not its NumPy body
        return float(s)                      # a host synchronisation

    c = launches.count_launches(step)
    assert c.launches == {"copy:memset": 1, "copy:setitem": 1, "elementwise:add": 1, "elementwise:multiply": 1,
                          "reduce:add": 1, "kernel:bias_relu_fwd": 1, "copy:fill": 1}
    assert c.synchronizations == 1
    assert c.allocations == 2 + 2 + 1 + 1  # zeros, empty, a*b, sum, empty, ones
    assert np.zeros is not None and not isinstance(np.zeros(1), launches._Traced)  # NumPy is restored


@pytest.mark.parametrize("sizes", [[784, 256, 256, 10], [784, 1024, 1024, 10]])
def test_launch_budget_of_a_training_step(sizes) -> None:
    net = gb.MLP(sizes, backend="numpy")
    b = launches.launch_budget(net, 128)
    names = b["by_name"]
    assert b["by_kind"]["gemm"] == 8             # 3 forward, 3 dW, 2 dX
    assert names["kernel:bias_relu_fwd"] == 2 and names["kernel:bias_identity_fwd"] == 1
    assert names["kernel:relu_bwd"] == 2 and names["kernel:softmax_xent"] == 1
    assert names["kernel:momentum_sgd"] == 1 and names["kernel:gather_scale"] == 1
    assert names["reduce:sum"] == 3              # one bias gradient each
    assert names["kernel:count_correct"] == 1    # the accuracy, counted in one launch
    assert b["synchronizations"] == 0            # the step never waits for the device
    assert b["launches"] <= 25                   # the budget recorded in docs/gpu_fast_path.md: never more
    assert b["allocations"] <= 4
    one = launches.launch_budget(net, 1)
    assert one["launches"] == b["launches"] and one["synchronizations"] == 0


# --------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("sizes,dtype,data,opt_name,tol", [
    ([30, 40, 33, 5], "float64", "float", "nesterov+decay", 1e-10),
    ([784, 256, 256, 10], "float32", "uint8", "momentum+decay", 1e-4),
    ([784, 64, 10], "float32", "uint8", "plain", 1e-4),
])
@pytest.mark.parametrize("blocks", [None, 1, 7])
def test_gpu_kernel_equals_the_general_path(sizes, dtype, data, opt_name, tol, blocks, rng) -> None:
    cp = backend.cupy_module()
    X, y, scale = _data(rng, 300, sizes[0], sizes[-1], data, dtype)
    order = rng.permutation(300)[:64]
    mu, nesterov, wd = OPTIMIZERS[opt_name]
    ref = gb.MLP(sizes, activation="relu", dtype=dtype, backend="numpy", seed=2)
    ref_opt = gb.SGD(ref, lr=0.02, momentum=mu, nesterov=nesterov, weight_decay=wd)
    net = ref.copy(backend="cupy")
    opt = gb.SGD(net, lr=0.02, momentum=mu, nesterov=nesterov, weight_decay=wd)
    loss, correct = per_sample_sgd(net, opt, cp.asarray(X), cp.asarray(y), cp.asarray(order), scale=scale,
                                   method="kernel", blocks=blocks, check=True)
    loss_ref, correct_ref = _general_path(ref, ref_opt, X, y, order, scale)
    assert _rel(net.flat_params.get(), ref.flat_params) < tol
    if mu:
        assert _rel(opt.velocity.get(), ref_opt.velocity) < tol
    assert float(loss) == pytest.approx(loss_ref, rel=tol * 10)
    assert abs(int(correct) - correct_ref) <= (0 if dtype == "float64" else 1)  # a float32 tie may flip


@pytest.mark.gpu
def test_gpu_kernel_runs_an_epoch_in_runs_with_per_sample_rates(rng) -> None:
    cp = backend.cupy_module()
    X, y, scale = _data(rng, 2000, 784, 10, "uint8")
    order = rng.permutation(2000)
    rates = np.linspace(0.05, 0.01, 2000)
    ref = gb.MLP([784, 128, 10], seed=1, backend="numpy", dtype="float64")  # 2000 steps: float64 stays exact
    ref_opt = gb.SGD(ref, lr=0.05, momentum=0.9)
    net = ref.copy(backend="cupy")
    opt = gb.SGD(net, lr=0.05, momentum=0.9)
    Xd, yd = cp.asarray(X), cp.asarray(y)
    for lo in range(0, 2000, 512):  # runs of 512 samples, as a trainer would launch them between progress reports
        per_sample_sgd(net, opt, Xd, yd, cp.asarray(order[lo:lo + 512]), scale=scale,
                       lr=cp.asarray(rates[lo:lo + 512]), method="kernel", check=True)
    _general_path(ref, ref_opt, X, y, order, scale, lrs=rates)
    assert _rel(net.flat_params.get(), ref.flat_params) < 1e-9


@pytest.mark.gpu
def test_gpu_per_sample_kernel_is_one_launch(rng) -> None:
    cp = backend.cupy_module()
    X, y, scale = _data(rng, 100, 784, 10, "uint8")
    net = gb.MLP([784, 256, 256, 10], backend="cupy")
    opt = gb.SGD(net, lr=0.01, momentum=0.9)
    Xd, yd, order = cp.asarray(X), cp.asarray(y), cp.arange(100, dtype=cp.int64)
    per_sample_sgd(net, opt, Xd, yd, order, scale=scale)  # compile, build the plan
    try:
        counted = launches.count_gpu_launches(lambda: per_sample_sgd(net, opt, Xd, yd, order, scale=scale))
    except backend.BackendError as exc:  # neither cupti-python nor a CUDA build of PyTorch
        pytest.skip(str(exc))
    assert counted["by_name"] == {"per_sample_sgd": 1}
