"""Running CUDA kernel sources on the CPU: g++ against a small emulation of what the kernels use.

The source a kernel is given (a ``RawKernel``'s text as it is, an ``ElementwiseKernel``'s text as CuPy
generates it) is compiled by g++ (C++20) after :data:`PRELUDE`, which supplies ``blockIdx``/``threadIdx``,
``__global__`` and friends, CuPy's ``CArray``/``CIndexer`` (``cupy/carray.cuh`` ported to the host, same
layout) and ``CUPY_FOR``, atomics (``std::atomic_ref``), warp shuffles, ``__syncthreads``, ``__ldcg``,
``clock64`` (which yields, so that spin-waits make progress) and the math functions. A launcher calls
the kernel with its arguments read from an array of addresses — each argument by value from where
the address points, as ``cuLaunchKernel`` does — once per CUDA thread:

* one thread after another, for kernels without ``__syncthreads``/``__syncwarp``/shuffles;
* one host thread per CUDA thread, all alive at once, with a ``std::barrier`` per block and per warp,
  for the others (so a cooperative grid can wait on itself).

A one-after-another launch that reads or writes memory it may not (SIGSEGV) stops there and poisons the
device, as an illegal address poisons a CUDA context: that call and every later one raise
``CUDA_ERROR_ILLEGAL_ADDRESS``. (A stray address that happens to be mapped reads garbage, as on a GPU.)

Builds are cached by the hash of their text in :func:`_fake.cache_dir`, shared by processes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from typing import Any

from .. import _fake
from ..cuda.compiler import CompileException

RUNTIME = r"""
// fakecupy's runtime: launches guarded against illegal addresses, and threaded launches (one host thread per
// CUDA thread, a std::barrier per block and per warp).
#include <barrier>
#include <chrono>
#include <csetjmp>
#include <csignal>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace {
struct Warp {
    std::barrier<> bar;
    unsigned long long slot[32];
    explicit Warp(int n) : bar(n) {}
};
thread_local std::barrier<>* t_block = nullptr;
thread_local Warp* t_warp = nullptr;
thread_local sigjmp_buf* t_jump = nullptr;

void on_fault(int sig, siginfo_t*, void*) {
    if (t_jump != nullptr) siglongjmp(*t_jump, 1);  // an illegal address in a guarded launch: report it
    signal(sig, SIG_DFL);
    raise(sig);
}
}

// Run body(ctx); 1 if it touched memory it may not (SIGSEGV/SIGBUS), as a GPU reports an illegal address.
extern "C" int fc_guarded(void (*body)(void*), void* ctx) {
    struct sigaction sa {}, old_segv {}, old_bus {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    sigjmp_buf jump;
    int faulted = 0;
    if (sigsetjmp(jump, 1) == 0) {
        t_jump = &jump;
        body(ctx);
    } else {
        faulted = 1;
    }
    t_jump = nullptr;
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    return faulted;
}

extern "C" void fc_run_threads(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               void (*body)(unsigned, unsigned, void*), void* ctx) {
    const unsigned per_block = bx * by * bz, blocks = gx * gy * gz, warps = (per_block + 31) / 32;
    std::vector<std::unique_ptr<std::barrier<>>> block_bars;
    std::vector<std::unique_ptr<Warp>> warp_syncs;
    for (unsigned b = 0; b < blocks; ++b) {
        block_bars.push_back(std::make_unique<std::barrier<>>(per_block));
        for (unsigned w = 0; w < warps; ++w)
            warp_syncs.push_back(std::make_unique<Warp>(w + 1 < warps ? 32 : per_block - 32 * w));
    }
    std::vector<std::thread> threads;
    threads.reserve(blocks * per_block);
    for (unsigned b = 0; b < blocks; ++b)
        for (unsigned t = 0; t < per_block; ++t)
            threads.emplace_back([=, &block_bars, &warp_syncs] {
                t_block = block_bars[b].get();
                t_warp = warp_syncs[b * warps + t / 32].get();
                body(b, t, ctx);
            });
    for (auto& th : threads) th.join();
}

extern "C" void fc_syncthreads() { t_block->arrive_and_wait(); }
extern "C" void fc_syncwarp() { t_warp->bar.arrive_and_wait(); }
extern "C" unsigned long long fc_warp_exchange(unsigned long long bits, int lane, int src) {
    t_warp->slot[lane] = bits;
    t_warp->bar.arrive_and_wait();
    const unsigned long long other = t_warp->slot[src & 31];
    t_warp->bar.arrive_and_wait();
    return other;
}
extern "C" long long fc_clock() {
    // Yields, so that a spin-wait on the clock lets the other threads run; ticks once per 16 ns, as host
    // threads emulating a GPU's run far slower than its own (a kernel's time-out measured in cycles lasts longer).
    std::this_thread::yield();
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now().time_since_epoch()).count() / 16;
}
"""

PRELUDE = r"""
// ---- the CUDA features kernels use, on the host (fakecupy) ----
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
using std::exp; using std::exp2; using std::expm1; using std::log; using std::log1p; using std::log2;
using std::log10; using std::sqrt; using std::tanh; using std::sinh; using std::cosh; using std::sin;
using std::cos; using std::tan; using std::fabs; using std::abs; using std::pow; using std::floor;
using std::ceil; using std::round; using std::trunc; using std::fmin; using std::fmax; using std::copysign;
using std::isfinite; using std::isnan; using std::isinf; using std::erf; using std::atan; using std::atan2;
template <class A, class B> inline auto min(A a, B b) -> decltype(a < b ? a : b) { return b < a ? b : a; }
template <class A, class B> inline auto max(A a, B b) -> decltype(a < b ? a : b) { return a < b ? b : a; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

struct __fc_dim3 { unsigned int x = 1, y = 1, z = 1; };
typedef __fc_dim3 dim3;
typedef __fc_dim3 uint3;
static thread_local uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__ static
#define __restrict__ __restrict
#define CUPY_FOR(i, n) \
    for (ptrdiff_t i = static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x)

// ---- synchronisation (threaded launches), from fakecupy's runtime library ----
extern "C" void fc_syncthreads();
extern "C" void fc_syncwarp();
extern "C" unsigned long long fc_warp_exchange(unsigned long long bits, int lane, int src);
extern "C" long long fc_clock();
inline void __syncthreads() { fc_syncthreads(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { fc_syncwarp(); }
inline int __fc_lane() { return (int)((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x) & 31; }
template <class T> inline T __fc_exchange(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    const unsigned long long other = fc_warp_exchange(bits, __fc_lane(), src);
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}
template <class T> T __shfl_sync(unsigned, T v, int src, int = 32) { return __fc_exchange(v, src); }
template <class T> T __shfl_xor_sync(unsigned, T v, int mask, int = 32) { return __fc_exchange(v, __fc_lane() ^ mask); }
template <class T> T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) {
    const int lane = __fc_lane();
    return __fc_exchange(v, lane + (int)d < 32 ? lane + (int)d : lane);
}
template <class T> T __shfl_up_sync(unsigned, T v, unsigned d, int = 32) {
    const int lane = __fc_lane();
    return __fc_exchange(v, lane >= (int)d ? lane - (int)d : lane);
}

// ---- memory: atomics (GCC's builtins), cache-hinted loads, fences, the clock ----
template <class T, class U> inline T atomicAdd(T* p, U v) {
    if constexpr (std::is_integral_v<T>) {
        return __atomic_fetch_add(p, (T)v, __ATOMIC_SEQ_CST);
    } else {
        T old, next;
        __atomic_load(p, &old, __ATOMIC_SEQ_CST);
        do { next = old + (T)v; } while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST,
                                                                     __ATOMIC_SEQ_CST));
        return old;
    }
}
template <class T, class U> inline T atomicSub(T* p, U v) { return atomicAdd(p, -(T)v); }
template <class T, class U> inline T atomicExch(T* p, U v) {
    T value = (T)v, old;
    __atomic_exchange(p, &value, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T, class U, class V> inline T atomicCAS(T* p, U cmp, V v) {
    T expected = (T)cmp, desired = (T)v;
    __atomic_compare_exchange(p, &expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
template <class T, class U> inline T atomicMax(T* p, U v) {
    T old;
    __atomic_load(p, &old, __ATOMIC_SEQ_CST);
    T next = (T)v;
    while (old < next && !__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
template <class T, class U> inline T atomicMin(T* p, U v) {
    T old;
    __atomic_load(p, &old, __ATOMIC_SEQ_CST);
    T next = (T)v;
    while (next < old && !__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) {
    T r;
    __atomic_load(const_cast<T*>(p), &r, __ATOMIC_SEQ_CST);
    return r;
}
template <class T> inline T __ldcv(const T* p) { return __ldcg(p); }
template <class T> inline void __stcg(T* p, T v) { __atomic_store(p, &v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline long long clock64() { return fc_clock(); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }

// ---- cupy/carray.cuh: CArray and CIndexer, the same layout and indexing ----
template <typename T, int _ndim, bool _c_contiguous = false, bool _use_32bit_indexing = false>
class CArray {
public:
    static const int ndim = _ndim;
    static const bool c_contiguous = _c_contiguous;
    typedef typename std::conditional<_use_32bit_indexing, int, ptrdiff_t>::type index_t;
private:
    T* data_;
    ptrdiff_t size_;
    ptrdiff_t shape_[ndim];
    ptrdiff_t strides_[ndim];
public:
    ptrdiff_t size() const { return size_; }
    const ptrdiff_t* shape() const { return shape_; }
    const ptrdiff_t* strides() const { return strides_; }
    template <typename Int> T& operator[](const Int (&idx)[ndim]) {
        return const_cast<T&>(const_cast<const CArray&>(*this)[idx]);
    }
    template <typename Int> const T& operator[](const Int (&idx)[ndim]) const {
        index_t diff = 0;
        for (int dim = 0; dim < ndim; ++dim)
            diff += static_cast<index_t>(strides_[dim]) * static_cast<index_t>(idx[dim]);
        return *reinterpret_cast<const T*>(reinterpret_cast<const char*>(data_) + diff);
    }
    T& operator[](ptrdiff_t i) { return const_cast<T&>(const_cast<const CArray&>(*this)[i]); }
    const T& operator[](ptrdiff_t idx) const {
        if (c_contiguous) return data_[idx];
        index_t diff = 0;
        index_t i = static_cast<index_t>(idx);
        for (int dim = ndim; --dim > 0; ) {
            index_t shape_dim = static_cast<index_t>(shape_[dim]);
            diff += static_cast<index_t>(strides_[dim]) * (i % shape_dim);
            i /= shape_dim;
        }
        diff += static_cast<index_t>(strides_[0]) * i;
        return *reinterpret_cast<const T*>(reinterpret_cast<const char*>(data_) + diff);
    }
};
template <typename T, bool _use_32bit_indexing>
class CArray<T, 0, true, _use_32bit_indexing> {
private:
    T* data_;
    ptrdiff_t size_;
public:
    static const int ndim = 0;
    ptrdiff_t size() const { return size_; }
    template <typename U> T& operator[](const U&) { return *data_; }
    template <typename U> T operator[](const U&) const { return *data_; }
};
template <int _ndim, bool _use_32bit_indexing = false>
class CIndexer {
public:
    static const int ndim = _ndim;
private:
    ptrdiff_t size_;
    ptrdiff_t shape_[ndim];
    ptrdiff_t index_[ndim];
    typedef ptrdiff_t index_t[ndim];
public:
    ptrdiff_t size() const { return size_; }
    const index_t& get() const { return index_; }
    void set(ptrdiff_t i) {
        if (ndim == 1) { index_[0] = i; return; }
        if (!_use_32bit_indexing && size_ > 1LL << 31) _set(static_cast<unsigned long long>(i));
        else _set(static_cast<unsigned int>(i));
    }
private:
    template <typename I> void _set(I i) {
        for (int dim = ndim; --dim > 0; ) {
            I s = static_cast<I>(shape_[dim]);
            I t = i / s;
            index_[dim] = i - t * s;
            i = t;
        }
        index_[0] = i;
    }
};
template <bool _use_32bit_indexing>
class CIndexer<0, _use_32bit_indexing> {
private:
    ptrdiff_t size_;
public:
    static const int ndim = 0;
    ptrdiff_t size() const { return size_; }
    void set(ptrdiff_t) {}
    const ptrdiff_t* get() const { return nullptr; }
};
// ---- end of the prelude; the kernel's own source follows ----
"""

LAUNCHER = r"""
// ---- fakecupy's launchers for KERNEL ----
template <class... A, std::size_t... I>
static inline void __fc_call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <class... A>
static inline void __fc_call(void (*f)(A...), void** args) { __fc_call(f, args, std::index_sequence_for<A...>{}); }

extern "C" void* fakecupy_kernel_address() { return reinterpret_cast<void*>(&KERNEL); }

struct __fc_Launch { unsigned g[3], b[3]; void** args; };

static void __fc_serial(void* p) {
    const __fc_Launch& l = *static_cast<__fc_Launch*>(p);
    for (unsigned z = 0; z < l.g[2]; ++z) for (unsigned y = 0; y < l.g[1]; ++y) for (unsigned x = 0; x < l.g[0]; ++x)
        for (unsigned tz = 0; tz < l.b[2]; ++tz) for (unsigned ty = 0; ty < l.b[1]; ++ty)
            for (unsigned tx = 0; tx < l.b[0]; ++tx) {
                blockIdx = {x, y, z};
                threadIdx = {tx, ty, tz};
                __fc_call(&KERNEL, l.args);
            }
}

extern "C" int fc_guarded(void (*)(void*), void*);

extern "C" int fakecupy_launch_serial(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                      unsigned bz, void** args) {
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    __fc_Launch l{{gx, gy, gz}, {bx, by, bz}, args};
    return fc_guarded(&__fc_serial, &l);
}

static void __fc_thread(unsigned b, unsigned t, void* args) {
    blockIdx = {b % gridDim.x, (b / gridDim.x) % gridDim.y, b / (gridDim.x * gridDim.y)};
    threadIdx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    __fc_call(&KERNEL, static_cast<void**>(args));
}

extern "C" void fc_run_threads(unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               void (*)(unsigned, unsigned, void*), void*);

extern "C" int fakecupy_launch_threads(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                       unsigned bz, void** args) {
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    fc_run_threads(gx, gy, gz, bx, by, bz, &__fc_thread, args);
    return 0;
}
"""

CXXFLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-x", "c++")
NEEDS_THREADS = re.compile(r"__syncthreads|__syncwarp|__shfl_")

_loaded: dict[str, Any] = {}


class Module:
    """A kernel compiled for the host: its launchers and whether it needs a thread per CUDA thread."""

    def __init__(self, lib: Any, source: str) -> None:
        self.lib = lib
        self.threaded = NEEDS_THREADS.search(source) is not None
        address = lib.fakecupy_kernel_address
        address.restype = ctypes.c_void_p
        self.ptr = int(address() or 0)
        launch = lib.fakecupy_launch_threads if self.threaded else lib.fakecupy_launch_serial
        launch.restype = ctypes.c_int
        launch.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p]
        self._launch = launch

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], addresses: list[int]) -> None:
        """Run the kernel; an illegal address poisons the device as a GPU's context is (every later call fails)."""
        _fake.check_context()
        argv = (ctypes.c_void_p * max(len(addresses), 1))(*addresses)
        if self._launch(*grid, *block, argv):
            _fake.poison()


def _build(text: str, stem: str, source: str, name: str, options: tuple) -> str:
    """The shared library of ``text`` in the cache (compiled unless another process already did)."""
    key = hashlib.sha256("\0".join((text, _fake.CXX, *CXXFLAGS)).encode()).hexdigest()[:32]
    so = os.path.join(_fake.cache_dir(), f"{stem}-{key}.so")
    if os.path.exists(so):
        return so
    fd, cpp = tempfile.mkstemp(suffix=".cpp", dir=_fake.cache_dir())
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp = f"{so}.{os.getpid()}.tmp"
    try:
        proc = subprocess.run([_fake.CXX, *CXXFLAGS, cpp, "-o", tmp], capture_output=True, text=True, check=False,
                              timeout=300)
    except FileNotFoundError:
        raise RuntimeError(f"the CuPy stand-in compiles kernels with {_fake.CXX}, which is not installed") from None
    finally:
        os.unlink(cpp)
    if proc.returncode:
        log = "\n".join(line for line in proc.stderr.splitlines() if "kernel.cu" in line)
        raise CompileException(log or proc.stderr, source, name, tuple(options))
    os.replace(tmp, so)
    _fake.launches["compile:" + name] += 1
    return so


_runtime: Any = None


def compile_module(source: str, name: str, options: tuple = ()) -> Module:
    """Compile ``source`` with the prelude and launchers for its ``extern "C"`` function ``name``.

    A compile error raises CuPy's ``CompileException`` with g++'s messages about the kernel's lines.
    """
    global _runtime
    text = PRELUDE + '\n#line 1 "kernel.cu"\n' + source + "\n#line 1 \"fakecupy-launcher\"\n" + \
        LAUNCHER.replace("KERNEL", name)
    if text in _loaded:
        return _loaded[text]
    if _runtime is None:  # the threaded launches' runtime, its symbols global for the kernels to find
        _runtime = ctypes.CDLL(_build(RUNTIME, "fakecupy-runtime", RUNTIME, "fakecupy-runtime", ()),
                               mode=ctypes.RTLD_GLOBAL)
    module = _loaded[text] = Module(ctypes.CDLL(_build(text, name, source, name, options)), source)
    return module
