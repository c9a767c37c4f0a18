// Fused RMSNorm over the last dim (contract item 16), on contiguous (rows, d) buffers:
//   forward   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)        (one block per row)
//   backward  dx = rstd * (g w - xhat * mean(g w xhat)),  xhat = x * rstd  (one block per row)
//             dw = sum over rows of g * xhat                              (column partials + finish)
// Sums run in float (double for f64); rstd is kept in that compute type (f32 for f16/bf16 inputs,
// as the CPU backend does), so the backward sees it unrounded.
#include "common.cuh"

template <typename T, typename A>
DEV void rmsnorm_forward_body(long long rows, long long d, T* y, A* rstd_out, const T* x, const T* w, A eps) {
    __shared__ A scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * d;
        A partial = 0;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) {
            A v = load(xr[j]);
            partial += v * v;
        }
        A rstd = (A)1 / m_sqrt(block_sum(partial, scratch) / (A)d + eps);
        if (threadIdx.x == 0) rstd_out[r] = rstd;
        T* yr = y + r * d;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) yr[j] = store<T>(load(xr[j]) * rstd * load(w[j]));
    }
}

template <typename T, typename A>
DEV void rmsnorm_backward_body(long long rows, long long d, T* dx, const T* g, const T* x, const T* w,
                               const A* rstd) {
    __shared__ A scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* gr = g + r * d;
        const T* xr = x + r * d;
        A rs = rstd[r];
        A partial = 0;  // sum of g w x over the row
        for (long long j = threadIdx.x; j < d; j += blockDim.x) partial += load(gr[j]) * load(w[j]) * load(xr[j]);
        A proj = rs * block_sum(partial, scratch) / (A)d;  // mean(g w xhat)
        T* out = dx + r * d;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) {
            A xhat = load(xr[j]) * rs;
            out[j] = store<T>(rs * (load(gr[j]) * load(w[j]) - xhat * proj));
        }
    }
}

// partial[k, j] = sum over rows r of chunk k (blockIdx.y) of g[r, j] * x[r, j] * rstd[r].
template <typename T, typename A>
DEV void rmsnorm_weight_partial_body(long long rows, long long d, long long chunk_rows, A* partial, const T* g,
                                     const T* x, const A* rstd) {
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= d) return;
    long long first = blockIdx.y * chunk_rows;
    long long last = ll_min(rows, first + chunk_rows);
    A sum = 0;
    for (long long r = first; r < last; ++r) sum += load(g[r * d + j]) * load(x[r * d + j]) * rstd[r];
    partial[blockIdx.y * d + j] = sum;
}

// gw[j] = sum over chunks k of partial[k, j], in the weight's dtype.
template <typename T, typename A>
DEV void rmsnorm_weight_finish_body(long long d, long long chunks, T* gw, const A* partial) {
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < d; j += (long long)gridDim.x * blockDim.x) {
        A sum = 0;
        for (long long k = 0; k < chunks; ++k) sum += partial[k * d + j];
        gw[j] = store<T>(sum);
    }
}

#define RMSNORM_KERNELS(T, A, SUFFIX)                                                                   \
    /* y = x * rstd * w and rstd per row */                                                             \
    extern "C" __global__ void rmsnorm_forward_##SUFFIX(long long rows, long long d, T* y, A* rstd,     \
                                                        const T* x, const T* w, A eps) {                \
        rmsnorm_forward_body<T, A>(rows, d, y, rstd, x, w, eps);                                        \
    }                                                                                                   \
    /* dx = rstd (g w - xhat mean(g w xhat)) per row */                                                 \
    extern "C" __global__ void rmsnorm_backward_##SUFFIX(long long rows, long long d, T* dx,            \
                                                         const T* g, const T* x, const T* w,            \
                                                         const A* rstd) {                               \
        rmsnorm_backward_body<T, A>(rows, d, dx, g, x, w, rstd);                                        \
    }                                                                                                   \
    /* partial[k, j] = sum over chunk k of g x rstd */                                                  \
    extern "C" __global__ void rmsnorm_weight_partial_##SUFFIX(long long rows, long long d,             \
                                                               long long chunk_rows, A* partial,        \
                                                               const T* g, const T* x, const A* rstd) { \
        rmsnorm_weight_partial_body<T, A>(rows, d, chunk_rows, partial, g, x, rstd);                    \
    }                                                                                                   \
    /* gw[j] = sum over chunks of partial[k, j] */                                                      \
    extern "C" __global__ void rmsnorm_weight_finish_##SUFFIX(long long d, long long chunks, T* gw,     \
                                                              const A* partial) {                       \
        rmsnorm_weight_finish_body<T, A>(d, chunks, gw, partial);                                       \
    }

RMSNORM_KERNELS(f16_t, float, f16)
RMSNORM_KERNELS(bf16_t, float, bf16)
RMSNORM_KERNELS(float, float, f32)
RMSNORM_KERNELS(double, double, f64)
