// The fused per-sample SGD kernel of gpu_backprop.experimental.persample (see its docstring and
// docs/gpu_fast_path.md). kernel_source(net, ...) prepends the network's shapes (NL, SUM_OUT, the c_*
// tables) and the types real (float/double) and xin_t (the data set's element type).
#ifndef SPIN_LIMIT
#define SPIN_LIMIT 20000000000LL              // clock cycles (about 10 s) before a barrier gives up
#endif
#ifndef VOLATILE_LOAD
#define VOLATILE_LOAD(p) (*(volatile const unsigned int*)(p))
#define VOLATILE_LOAD_INT(p) (*(volatile const int*)(p))
#define SPIN_PAUSE()
#endif

// ---- activations: f(z) and f' from the output a = f(z), as in gpu_backprop.kernels ----
__device__ __forceinline__ real act_f(int kind, real x, real alpha) {
    switch (kind) {
        case 1: return x > (real)0 ? x : (real)0;
        case 2: return x > (real)0 ? x : alpha * x;
        case 3: return (real)0.5 * tanh((real)0.5 * x) + (real)0.5;
        case 4: return tanh(x);
        default: return x;
    }
}

__device__ __forceinline__ real act_grad(int kind, real a, real alpha) {
    switch (kind) {
        case 1: return a > (real)0 ? (real)1 : (real)0;
        case 2: return a > (real)0 ? (real)1 : alpha;
        case 3: return a * ((real)1 - a);
        case 4: return (real)1 - a * a;
        default: return (real)1;
    }
}

__device__ __forceinline__ real warp_sum(real v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ real warp_max(real v) {
    for (int o = 16; o > 0; o >>= 1) { real u = __shfl_xor_sync(0xffffffffu, v, o); v = u > v ? u : v; }
    return v;
}

// A grid-wide barrier for a co-resident grid (cooperative launch): block leaders count
// arrivals; the last one resets the count and bumps the generation the others wait on.
// The state (count, generation) is left ready for the next barrier and the next launch.
__device__ __forceinline__ void grid_barrier(unsigned int* state, int* err) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int gen = VOLATILE_LOAD(state + 1);
        __threadfence();
        if (atomicAdd(state, 1u) == gridDim.x - 1) {
            atomicExch(state, 0u);
            __threadfence();
            atomicAdd(state + 1, 1u);
        } else {
            const long long t0 = clock64();
            while (VOLATILE_LOAD(state + 1) == gen) {
                if (VOLATILE_LOAD_INT(err)) break;
                if (clock64() - t0 > SPIN_LIMIT) { atomicExch(err, 1); break; }
                SPIN_PAUSE();
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// The tiles of layer l: R rows x 32 columns each, ceil(M / 32) column groups; warp w owns
// tiles w, w + nwarps, ... in every phase, so each weight stays with one SM.
__device__ __forceinline__ int tile_rows(int l, int nwarps) {
    const int groups = (c_out[l] + 31) / 32;
    int r = (c_in[l] * groups + nwarps - 1) / nwarps;
    return r < MIN_TILE_ROWS ? MIN_TILE_ROWS : r;
}

__device__ __forceinline__ int tile_count(int l, int rows) {
    return ((c_in[l] + rows - 1) / rows) * ((c_out[l] + 31) / 32);
}

// One SGD step for one parameter entry (kernels.sgd_update, momentum_sgd).
__device__ __forceinline__ real sgd_entry(real p, real g, real* v, long long idx, real lr, real mu, real wd,
                                          long long n_decay, int momentum, int nesterov) {
    if (idx < n_decay) g += wd * p;
    if (!momentum) return p - lr * g;
    const real vn = mu * v[idx] + g;
    v[idx] = vn;
    return p - lr * (nesterov ? g + mu * vn : vn);
}

// Input i of layer l for the current sample: the data row for l = 0, else f(z + b) of layer l-1.
__device__ __forceinline__ real layer_input(int l, int i, const real* zacc, const real* params,
                                            const xin_t* xrow, real scale) {
    if (l == 0) return (real)xrow[i] * scale;
    const int k = l - 1;
    return act_f(c_act[k], __ldcg(zacc + c_hoff[k] + i) + __ldcg(params + c_boff[k] + i), c_alpha[k]);
}

extern "C" __global__ void __launch_bounds__(BLOCK)
per_sample_sgd(real* params, real* velocity, const xin_t* X, const long long* labels, const long long* order,
               const long long n_samples, const real scale, const real lr, const real* lrs, const int use_lrs,
               const real mu, const real wd, const long long n_decay, const int momentum, const int nesterov,
               real* scratch, unsigned int* barrier, int* err, double* loss_out, long long* correct_out)
{
    const int lane = threadIdx.x & 31;
    const int gtid = blockIdx.x * blockDim.x + threadIdx.x;
    const int nthreads = gridDim.x * blockDim.x;
    const int warp = gtid >> 5;
    const int nwarps = nthreads >> 5;
    const int D0 = c_in[0];
    const int C = c_out[NL - 1];
    real* zacc = scratch;                  // [2][SUM_OUT]: pre-activations without bias, one per parity
    real* hbuf = scratch + 2 * SUM_OUT;    // outputs of the hidden layers; dz of the last layer
    real* dxb = scratch + 3 * SUM_OUT;     // dX accumulators of the hidden layers
    double loss_sum = 0.0;
    long long n_correct = 0;

    // prologue: z of sample 0 starts at zero, then its first layer's forward
    for (int t = gtid; t < SUM_OUT; t += nthreads) zacc[t] = (real)0;
    grid_barrier(barrier, err);
    {
        const xin_t* x0 = X + order[0] * (long long)D0;
        const int R = tile_rows(0, nwarps), M = c_out[0];
        for (int tile = warp; tile < tile_count(0, R); tile += nwarps) {
            const int groups = (M + 31) / 32, col = (tile % groups) * 32 + lane, r0 = (tile / groups) * R;
            const int r1 = r0 + R < D0 ? r0 + R : D0;
            real acc = 0;
            for (int i = r0; i < r1; ++i) {
                const real xi = (real)x0[i] * scale;
                if (xi != (real)0 && col < M) acc += xi * params[c_woff[0] + (long long)i * M + col];
            }
            if (col < M) atomicAdd(zacc + c_hoff[0] + col, acc);
        }
    }
    grid_barrier(barrier, err);

    for (long long k = 0; k < n_samples; ++k) {
        const int p = (int)(k & 1);
        real* zp = zacc + p * SUM_OUT;
        real* znext = zacc + (1 - p) * SUM_OUT;
        const long long row = order[k];
        const xin_t* xrow = X + row * (long long)D0;
        const long long label = labels[row];
        const real rate = use_lrs ? lrs[k] : lr;

        // ---- F_l, l = 1 .. NL-1: z^l += h^{l-1} W^l; side jobs: keep h^{l-1}, clear dX^{l-1} ----
        for (int l = 1; l < NL; ++l) {
            const int Dl = c_in[l], M = c_out[l];
            for (int t = gtid; t < Dl; t += nthreads) {
                hbuf[c_hoff[l - 1] + t] = layer_input(l, t, zp, params, xrow, scale);
                dxb[c_hoff[l - 1] + t] = (real)0;
            }
            if (l == 1) for (int t = gtid; t < SUM_OUT; t += nthreads) znext[t] = (real)0;
            const int R = tile_rows(l, nwarps), groups = (M + 31) / 32;
            for (int tile = warp; tile < tile_count(l, R); tile += nwarps) {
                const int col = (tile % groups) * 32 + lane, r0 = (tile / groups) * R;
                const int r1 = r0 + R < Dl ? r0 + R : Dl;
                real acc = 0;
                for (int i = r0; i < r1; ++i) {
                    const real hi = layer_input(l, i, zp, params, xrow, scale);
                    if (hi != (real)0 && col < M) acc += hi * params[c_woff[l] + (long long)i * M + col];
                }
                if (col < M) atomicAdd(zp + c_hoff[l] + col, acc);
            }
            grid_barrier(barrier, err);
        }

        // ---- B_{NL-1}: softmax cross-entropy (every warp), update the last layer, dX before it ----
        {
            const int l = NL - 1, Dl = c_in[l], kind = c_act[l];
            const real alpha = c_alpha[l];
            const real* z = zp + c_hoff[l];
            const real* b = params + c_boff[l];
            // out_j = f(z_j + b_j); m = max, s = sum exp(out - m): every warp computes them
            real m = act_f(kind, __ldcg(z) + __ldcg(b), alpha);
            for (int j = lane; j < C; j += 32) { real o = act_f(kind, __ldcg(z + j) + __ldcg(b + j), alpha); m = o > m ? o : m; }
            m = warp_max(m);
            real s = 0;
            for (int j = lane; j < C; j += 32) s += exp(act_f(kind, __ldcg(z + j) + __ldcg(b + j), alpha) - m);
            s = warp_sum(s);
            const real inv = (real)1 / s;
            if (warp == 0) {   // keep dz for the bias update, count the loss and the prediction
                int best = 0;
                real best_v = act_f(kind, __ldcg(z) + __ldcg(b), alpha);
                for (int j = 1; j < C; ++j) {
                    const real o = act_f(kind, __ldcg(z + j) + __ldcg(b + j), alpha);
                    if (o > best_v) { best_v = o; best = j; }
                }
                for (int j = lane; j < C; j += 32) {
                    const real o = act_f(kind, __ldcg(z + j) + __ldcg(b + j), alpha);
                    hbuf[c_hoff[l] + j] = (exp(o - m) * inv - (j == label ? (real)1 : (real)0)) * act_grad(kind, o, alpha);
                }
                if (lane == 0) {
                    const real o_t = act_f(kind, __ldcg(z + label) + __ldcg(b + label), alpha);
                    loss_sum += (double)(log(s) + m - o_t);
                    n_correct += best == label;
                }
            }
            const int R = tile_rows(l, nwarps), groups = (C + 31) / 32;
            for (int tile = warp; tile < tile_count(l, R); tile += nwarps) {
                const int col = (tile % groups) * 32 + lane, r0 = (tile / groups) * R;
                const int r1 = r0 + R < Dl ? r0 + R : Dl;
                real dz = 0;
                if (col < C) {
                    const real o = act_f(kind, __ldcg(z + col) + __ldcg(b + col), alpha);
                    dz = (exp(o - m) * inv - (col == label ? (real)1 : (real)0)) * act_grad(kind, o, alpha);
                }
                for (int i = r0; i < r1; ++i) {
                    const real xi = __ldcg(hbuf + c_hoff[l - 1] + i);
                    real part = 0;
                    if (col < C) {
                        const long long idx = c_woff[l] + (long long)i * C + col;
                        const real w = params[idx];
                        part = w * dz;
                        params[idx] = sgd_entry(w, xi * dz, velocity, idx, rate, mu, wd, n_decay, momentum, nesterov);
                    }
                    part = warp_sum(part);
                    if (lane == 0) atomicAdd(dxb + c_hoff[l - 1] + i, part);
                }
            }
            grid_barrier(barrier, err);
        }

        // ---- B_l, l = NL-2 .. 0: dz = dX (.) f'(h), update W^l and b^l, dX before it; B_0 also runs
        //      the next sample's F_0 with the new weights. The last layer's bias is updated in the
        //      first of these phases (nobody reads it there). ----
        for (int l = NL - 2; l >= 0; --l) {
            const int Dl = c_in[l], M = c_out[l], kind = c_act[l];
            const real alpha = c_alpha[l];
            const bool next = (l == 0) && (k + 1 < n_samples);
            const xin_t* xnext = next ? X + order[k + 1] * (long long)D0 : xrow;
            for (int t = gtid; t < M; t += nthreads) {
                const real dz = __ldcg(dxb + c_hoff[l] + t) * act_grad(kind, __ldcg(hbuf + c_hoff[l] + t), alpha);
                const long long idx = c_boff[l] + t;
                params[idx] = sgd_entry(__ldcg(params + idx), dz, velocity, idx, rate, mu, wd, n_decay, momentum,
                                        nesterov);
            }
            if (l == NL - 2) {
                for (int t = gtid; t < C; t += nthreads) {
                    const long long idx = c_boff[NL - 1] + t;
                    params[idx] = sgd_entry(__ldcg(params + idx), __ldcg(hbuf + c_hoff[NL - 1] + t), velocity, idx,
                                            rate, mu, wd, n_decay, momentum, nesterov);
                }
            }
            const int R = tile_rows(l, nwarps), groups = (M + 31) / 32;
            for (int tile = warp; tile < tile_count(l, R); tile += nwarps) {
                const int col = (tile % groups) * 32 + lane, r0 = (tile / groups) * R;
                const int r1 = r0 + R < Dl ? r0 + R : Dl;
                real dz = 0, acc = 0;
                if (col < M) dz = __ldcg(dxb + c_hoff[l] + col) * act_grad(kind, __ldcg(hbuf + c_hoff[l] + col), alpha);
                for (int i = r0; i < r1; ++i) {
                    const real xi = l == 0 ? (real)xrow[i] * scale : __ldcg(hbuf + c_hoff[l - 1] + i);
                    real part = 0;
                    if (col < M) {
                        const long long idx = c_woff[l] + (long long)i * M + col;
                        const real w = params[idx];
                        part = w * dz;
                        const real wn = sgd_entry(w, xi * dz, velocity, idx, rate, mu, wd, n_decay, momentum, nesterov);
                        params[idx] = wn;
                        if (next) {
                            const real xn = (real)xnext[i] * scale;
                            if (xn != (real)0) acc += xn * wn;
                        }
                    }
                    if (l > 0) {
                        part = warp_sum(part);
                        if (lane == 0) atomicAdd(dxb + c_hoff[l - 1] + i, part);
                    }
                }
                if (next && col < M) atomicAdd(znext + c_hoff[0] + col, acc);
            }
            grid_barrier(barrier, err);
        }
    }
    if (gtid == 0) { *loss_out = loss_sum; *correct_out = n_correct; }
}
