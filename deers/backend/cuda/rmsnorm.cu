// Fused RMSNorm over the last dim (contract item 16), on contiguous (rows, d) buffers:
//   forward   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)        (one block per row)
//   backward  dx = rstd * (g w - xhat * mean(g w xhat)),  xhat = x * rstd
//             dw = sum over rows of g * xhat
// The backward is one kernel for dx and dw's column partials (one block per chunk of rows, row by
// row; each thread adds its columns' g * xhat into its block's own partial row, so no atomics) and
// a finish kernel summing the partial rows in a fixed order: deterministic, two launches.
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

// Rows [k chunk_rows, (k + 1) chunk_rows) of block k: dx row by row, and
// partial[k, j] = sum over those rows r of g[r, j] * x[r, j] * rstd[r].
template <typename T, typename A>
DEV void rmsnorm_backward_body(long long rows, long long d, long long chunk_rows, T* dx, A* partial, const T* g,
                               const T* x, const T* w, const A* rstd) {
    __shared__ A scratch[32];
    for (long long k = blockIdx.x; k * chunk_rows < rows; k += gridDim.x) {
        A* pk = partial + k * d;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) pk[j] = 0;
        long long last = ll_min(rows, (k + 1) * chunk_rows);
        for (long long r = k * chunk_rows; r < last; ++r) {
            const T* gr = g + r * d;
            const T* xr = x + r * d;
            A rs = rstd[r];
            A sum_gwx = 0;  // sum of g w x over the row
            for (long long j = threadIdx.x; j < d; j += blockDim.x) sum_gwx += load(gr[j]) * load(w[j]) * load(xr[j]);
            A proj = rs * block_sum(sum_gwx, scratch) / (A)d;  // mean(g w xhat)
            T* out = dx + r * d;
            for (long long j = threadIdx.x; j < d; j += blockDim.x) {
                A gj = load(gr[j]);
                A xhat = load(xr[j]) * rs;
                out[j] = store<T>(rs * (gj * load(w[j]) - xhat * proj));
                pk[j] += gj * xhat;  // this thread's own column of this block's own partial row
            }
        }
    }
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
    /* dx = rstd (g w - xhat mean(g w xhat)) per row, and dw's partial sums per chunk of rows */        \
    extern "C" __global__ void rmsnorm_backward_##SUFFIX(long long rows, long long d,                   \
                                                         long long chunk_rows, T* dx, A* partial,       \
                                                         const T* g, const T* x, const T* w,            \
                                                         const A* rstd) {                               \
        rmsnorm_backward_body<T, A>(rows, d, chunk_rows, dx, partial, g, x, w, rstd);                   \
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
