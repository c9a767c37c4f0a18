// Fused softmax / log-softmax of scale * x over the last dim, forward and backward (contract item
// 14), one block per row, computed in float (double for f64). With causal_rows = T > 0 the rows are the
// query rows of (..., T, S) attention scores and position s of query row t is masked out when
// s > t + (S - T): softmax gives it 0 (log-softmax -inf), and the backward gives it no gradient.
#include "common.cuh"

// How many leading columns of row r are visible (all of them without a causal mask).
DEV long long visible_columns(long long r, long long cols, long long causal_rows) {
    if (causal_rows <= 0) return cols;
    long long t = r % causal_rows;
    return ll_min(cols, t + (cols - causal_rows) + 1);
}

// With z = scale x: y = exp(z - max) / sum(exp(z - max)), or log_softmax: y = z - max - log(sum(exp(z - max))).
template <typename T>
DEV void softmax_body(long long rows, long long cols, T* out, const T* a, const long long* meta, int log_out,
                      long long causal_rows, double scale) {
    typedef typename Acc<T>::type A;
    const A s = (A)scale;
    __shared__ A scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        long long base = row_base(r, meta);
        long long visible = visible_columns(r, cols, causal_rows);
        // pass 1: each thread keeps a running (max, sum of exp(x - max)) over its columns
        A peak = neg_inf(A());
        A total = 0;
        for (long long c = threadIdx.x; c < visible; c += blockDim.x) {
            A x = s * load(a[base + col_offset(c, meta)]);
            A next = nan_max(peak, x);
            if (next == neg_inf(A())) continue;  // only -inf so far: nothing to add
            total = total * m_exp(peak - next) + m_exp(x - next);
            peak = next;
        }
        A row_peak = block_max(peak, scratch);
        A scaled = (peak == neg_inf(A())) ? (A)0 : total * m_exp(peak - row_peak);
        A row_total = block_sum(scaled, scratch);
        A log_total = m_log(row_total);
        // pass 2: write the normalised row
        T* y = out + r * cols;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A value;
            if (c < visible) {
                A shifted = s * load(a[base + col_offset(c, meta)]) - row_peak;
                value = log_out ? shifted - log_total : m_exp(shifted) / row_total;
            } else {
                value = log_out ? neg_inf(A()) : (A)0;
            }
            y[c] = store<T>(value);
        }
    }
}

// softmax: dx = scale y (g - sum(g y)); log_softmax: dx = scale (g - exp(y) sum(g)). Masked columns get 0.
template <typename T>
DEV void softmax_backward_body(long long rows, long long cols, T* out, const T* y, const T* g, int log_out,
                               long long causal_rows, double scale) {
    typedef typename Acc<T>::type A;
    const A s = (A)scale;
    __shared__ A scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        long long visible = visible_columns(r, cols, causal_rows);
        const T* yr = y + r * cols;
        const T* gr = g + r * cols;
        A partial = 0;
        for (long long c = threadIdx.x; c < visible; c += blockDim.x) {
            A gc = load(gr[c]);
            partial += log_out ? gc : gc * load(yr[c]);
        }
        A dot = block_sum(partial, scratch);
        T* dx = out + r * cols;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A value = 0;
            if (c < visible) {
                A yc = load(yr[c]);
                A gc = load(gr[c]);
                value = s * (log_out ? gc - m_exp(yc) * dot : yc * (gc - dot));
            }
            dx[c] = store<T>(value);
        }
    }
}

#define SOFTMAX_KERNELS(T, SUFFIX)                                                                      \
    /* out = (log-)softmax of each row, causal mask optional */                                         \
    extern "C" __global__ void MAX_THREADS_1024 softmax_##SUFFIX(long long rows, long long cols, T* out, \
                                                                 const T* a, const long long* meta,    \
                                                                 int log_out, long long causal_rows,   \
                                                                 double scale) {                       \
        softmax_body<T>(rows, cols, out, a, meta, log_out, causal_rows, scale);                         \
    }                                                                                                   \
    /* out = the gradient of (log-)softmax per row */                                                   \
    extern "C" __global__ void MAX_THREADS_1024 softmax_backward_##SUFFIX(                              \
        long long rows, long long cols, T* out, const T* y, const T* g, int log_out,                    \
        long long causal_rows, double scale) {                                                          \
        softmax_backward_body<T>(rows, cols, out, y, g, log_out, causal_rows, scale);                   \
    }

SOFTMAX_KERNELS(f16_t, f16)
SOFTMAX_KERNELS(bf16_t, bf16)
SOFTMAX_KERNELS(float, f32)
SOFTMAX_KERNELS(double, f64)
