// Fused CPU kernels of the multiresolution hash encoding (nfields/encodings/hashgrid.py is the pure-torch twin and
// the reference the tests compare against). Plain C ABI, no torch headers: built in about a second with
// `g++ -O3 -fopenmp -shared` and called through ctypes with the tensors' data pointers (hashgrid_native.py).
//
// Each kernel recomputes a point's cell corners, d-linear weights and their derivatives on the fly instead of
// storing (2^d, levels, N) tensors: the torch version's time went to streaming those through memory.
// Layouts: x (N, D) float32; table (rows, F) float32; the encoding and its gradient (N, out_stride) with level l's
// features at columns l*F .. l*F+F-1 (level-major, like tiny-cuda-nn); grad_x and gg (N, D).
// Kernels that scatter into the table run one level per task: levels own disjoint rows, so no atomics are needed
// and the sums are deterministic.
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace {

const uint32_t PRIMES[3] = {1u, 2654435761u, 805459861u};

struct Level {
    float resf;
    int32_t resi;
    int64_t offset;
    int32_t hashed;
    uint32_t mask;
};

// Clamp to [0, 1] (NaN -> 0, so no index ever leaves the table); `inside` is 1 where x was already in [0, 1]
// (the clamp passes no gradient elsewhere).
inline float clamp01(float v, float* inside) {
    *inside = (v >= 0.0f && v <= 1.0f) ? 1.0f : 0.0f;
    if (!(v >= 0.0f)) return 0.0f;
    return v > 1.0f ? 1.0f : v;
}

// Rows, weights and (optionally) the weights' derivatives d w_c / d x_j of the 2^D corners of x's cell in one
// level. Corner c takes the upper vertex on axis j when its bit D-1-j is set (the torch version's order).
template <int D, bool DW>
inline void cell(const float* xc, const Level& lv, int64_t* rows, float* w, float (*dw)[1 << D]) {
    constexpr int C = 1 << D;
    float frac[D];
    uint32_t lo[D];
    for (int j = 0; j < D; ++j) {
        float pos = xc[j] * lv.resf;
        float l = std::floor(pos);
        if (l > lv.resf - 1.0f) l = lv.resf - 1.0f;
        frac[j] = pos - l;
        lo[j] = (uint32_t)(int32_t)l;
    }
    for (int c = 0; c < C; ++c) {
        float prod = 1.0f;
        uint32_t h = 0;
        int64_t idx = 0, stride = 1;
        for (int j = 0; j < D; ++j) {
            const int up = (c >> (D - 1 - j)) & 1;
            const uint32_t v = lo[j] + (uint32_t)up;
            prod *= up ? frac[j] : 1.0f - frac[j];
            if (lv.hashed) {
                h ^= v * PRIMES[j];
            } else {
                idx += (int64_t)v * stride;
                stride *= (int64_t)lv.resi + 1;
            }
        }
        rows[c] = lv.offset + (lv.hashed ? (int64_t)(h & lv.mask) : idx);
        w[c] = prod;
        if (DW) {
            for (int j = 0; j < D; ++j) {
                float p = 1.0f;
                for (int i = 0; i < D; ++i) {
                    const int up = (c >> (D - 1 - i)) & 1;
                    if (i == j)
                        p *= up ? lv.resf : -lv.resf;
                    else
                        p *= up ? frac[i] : 1.0f - frac[i];
                }
                dw[j][c] = p;
            }
        }
    }
}

// The level constants as the kernels use them; false when L is out of range.
inline bool levels_from(Level* out, int L, const int32_t* res, const int64_t* offset, const int32_t* hashed,
                        uint32_t mask) {
    if (L < 0 || L > 32) return false;
    for (int l = 0; l < L; ++l) out[l] = Level{(float)res[l], res[l], offset[l], hashed[l], mask};
    return true;
}

template <int D, int F>
void forward(int64_t N, const float* x, const float* table, const Level* lv, int L, int64_t stride, float* out,
             int threads) {
    constexpr int C = 1 << D;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) {
        float xc[D], ins;
        for (int j = 0; j < D; ++j) xc[j] = clamp01(x[n * D + j], &ins);
        for (int l = 0; l < L; ++l) {
            int64_t rows[C];
            float w[C];
            cell<D, false>(xc, lv[l], rows, w, nullptr);
            float acc[F] = {};
            for (int c = 0; c < C; ++c) {
                const float* t = table + rows[c] * F;
                for (int f = 0; f < F; ++f) acc[f] += w[c] * t[f];
            }
            for (int f = 0; f < F; ++f) out[n * stride + l * F + f] = acc[f];
        }
    }
}

template <int D, int F>
void backward_table(int64_t N, const float* x, const float* grad_out, const Level* lv, int L, int64_t stride,
                    float* grad_table, int threads) {
    constexpr int C = 1 << D;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int l = 0; l < L; ++l) {
        for (int64_t n = 0; n < N; ++n) {
            const float* g = grad_out + n * stride + l * F;
            bool any = false;
            for (int f = 0; f < F; ++f) any |= g[f] != 0.0f;
            if (!any) continue;
            float xc[D], ins;
            for (int j = 0; j < D; ++j) xc[j] = clamp01(x[n * D + j], &ins);
            int64_t rows[C];
            float w[C];
            cell<D, false>(xc, lv[l], rows, w, nullptr);
            for (int c = 0; c < C; ++c) {
                float* t = grad_table + rows[c] * F;
                for (int f = 0; f < F; ++f) t[f] += w[c] * g[f];
            }
        }
    }
}

template <int D, int F>
void grad_x(int64_t N, const float* x, const float* table, const float* grad_out, const Level* lv, int L,
            int64_t stride, float* gx, int threads) {
    constexpr int C = 1 << D;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) {
        float xc[D], inside[D];
        for (int j = 0; j < D; ++j) xc[j] = clamp01(x[n * D + j], &inside[j]);
        float acc[D] = {};
        for (int l = 0; l < L; ++l) {
            const float* g = grad_out + n * stride + l * F;
            int64_t rows[C];
            float w[C], dw[D][C];
            cell<D, true>(xc, lv[l], rows, w, dw);
            for (int c = 0; c < C; ++c) {
                const float* t = table + rows[c] * F;
                float s = 0.0f;
                for (int f = 0; f < F; ++f) s += t[f] * g[f];
                for (int j = 0; j < D; ++j) acc[j] += dw[j][c] * s;
            }
        }
        for (int j = 0; j < D; ++j) gx[n * D + j] = acc[j] * inside[j];
    }
}

// The backward of grad_x: with u_c = sum_j dw[j][c] gg_j (gg masked like grad_x), the gradients w.r.t. the table
// (g_table[row_c] += u_c * grad_out) and w.r.t. the incoming gradient (g_out = sum_c u_c * table[row_c]).
template <int D, int F>
void grad_x_backward(int64_t N, const float* x, const float* table, const float* grad_out, const float* gg,
                     const Level* lv, int L, int64_t stride, float* g_table, float* g_out, int threads) {
    constexpr int C = 1 << D;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int l = 0; l < L; ++l) {
        for (int64_t n = 0; n < N; ++n) {
            float xc[D], inside[D], ggm[D];
            bool any = false;
            for (int j = 0; j < D; ++j) {
                xc[j] = clamp01(x[n * D + j], &inside[j]);
                ggm[j] = gg[n * D + j] * inside[j];
                any |= ggm[j] != 0.0f;
            }
            if (!any) {
                if (g_out)
                    for (int f = 0; f < F; ++f) g_out[n * stride + l * F + f] = 0.0f;
                continue;
            }
            int64_t rows[C];
            float w[C], dw[D][C];
            cell<D, true>(xc, lv[l], rows, w, dw);
            const float* g = grad_out + n * stride + l * F;
            float acc[F] = {};
            for (int c = 0; c < C; ++c) {
                float u = 0.0f;
                for (int j = 0; j < D; ++j) u += dw[j][c] * ggm[j];
                if (g_out) {
                    const float* t = table + rows[c] * F;
                    for (int f = 0; f < F; ++f) acc[f] += u * t[f];
                }
                if (g_table) {
                    float* t = g_table + rows[c] * F;
                    for (int f = 0; f < F; ++f) t[f] += u * g[f];
                }
            }
            if (g_out)
                for (int f = 0; f < F; ++f) g_out[n * stride + l * F + f] = acc[f];
        }
    }
}

// Calls fn(D, F) with the (dimension, features per level) pair as compile-time constants; 0, or -1 when the pair is
// not supported.
template <class Fn>
int dispatch(int d, int f, Fn&& fn) {
    auto with_f = [&](auto D) -> int {
        switch (f) {
            case 1: fn(D, std::integral_constant<int, 1>{}); return 0;
            case 2: fn(D, std::integral_constant<int, 2>{}); return 0;
            case 4: fn(D, std::integral_constant<int, 4>{}); return 0;
            case 8: fn(D, std::integral_constant<int, 8>{}); return 0;
            default: return -1;
        }
    };
    switch (d) {
        case 1: return with_f(std::integral_constant<int, 1>{});
        case 2: return with_f(std::integral_constant<int, 2>{});
        case 3: return with_f(std::integral_constant<int, 3>{});
        default: return -1;
    }
}

}  // namespace

// Every entry point: (d, F, N, x, <inputs>, L, res, offset, hashed, mask, stride, <outputs>, threads).
#define NF_LEVEL_ARGS \
    int L, const int32_t *res, const int64_t *offset, const int32_t *hashed, uint32_t mask, int64_t stride
#define NF_RUN(KERNEL, ...)                                                               \
    Level lv[32];                                                                         \
    if (!levels_from(lv, L, res, offset, hashed, mask)) return -1;                        \
    return dispatch(d, f, [&](auto D, auto F) { KERNEL<D.value, F.value>(__VA_ARGS__); });

extern "C" {

int nf_hg_forward(int d, int f, int64_t N, const float* x, const float* table, NF_LEVEL_ARGS, float* out,
                  int threads) {
    NF_RUN(forward, N, x, table, lv, L, stride, out, threads)
}

int nf_hg_backward_table(int d, int f, int64_t N, const float* x, const float* grad_out, NF_LEVEL_ARGS,
                         float* grad_table, int threads) {
    NF_RUN(backward_table, N, x, grad_out, lv, L, stride, grad_table, threads)
}

int nf_hg_grad_x(int d, int f, int64_t N, const float* x, const float* table, const float* grad_out,
                 NF_LEVEL_ARGS, float* gx, int threads) {
    NF_RUN(grad_x, N, x, table, grad_out, lv, L, stride, gx, threads)
}

int nf_hg_grad_x_backward(int d, int f, int64_t N, const float* x, const float* table, const float* grad_out,
                          const float* gg, NF_LEVEL_ARGS, float* g_table, float* g_out, int threads) {
    NF_RUN(grad_x_backward, N, x, table, grad_out, gg, lv, L, stride, g_table, g_out, threads)
}

}  // extern "C"
