// Multi-tensor kernels: one launch works on a whole list of arrays (contract items 18-20), the way
// an optimizer step and gradient clipping touch every parameter. A GPT has dozens of parameters;
// one launch per parameter per pass would be most of a training step's launches.
//
// The arrays come as a "table" (an int64 device array the host builds, fused.py `_table`):
//   table[0]                    n, the number of arrays
//   table[1 .. n + 1]           start[j]: where array j begins in the concatenation of all n
//                               (start[0] = 0, start[n] = the total number of elements)
//   table[n + 2 + s n + j]      the device address of array j in slot s (AdamW: param, grad, m, v)
// Every array is dense (contiguous from its address). Blocks take CHUNK consecutive elements of
// the concatenation at a time, so a block finds its array once per chunk and walks on from there.
#include "common.cuh"

#define CHUNK 4096LL

DEV long long table_count(const long long* table) { return table[0]; }
DEV const long long* table_starts(const long long* table) { return table + 1; }
template <typename T> DEV T* table_array(const long long* table, int slot, long long j) {
    long long n = table[0];
    return (T*)table[n + 2 + slot * n + j];
}

// The array that holds element i of the concatenation (start[j] <= i < start[j + 1]).
DEV long long array_of(const long long* start, long long n, long long i) {
    long long lo = 0, hi = n;  // invariant: start[lo] <= i < start[hi]
    while (hi - lo > 1) {
        long long mid = (lo + hi) / 2;
        if (start[mid] <= i) lo = mid; else hi = mid;
    }
    return lo;
}

// Calls body(j, k) for element k of array j, for every element of the chunks this block takes.
template <typename Body> DEV void for_each_element(const long long* table, Body& body) {
    long long n = table_count(table);
    const long long* start = table_starts(table);
    for (long long c0 = blockIdx.x * CHUNK; c0 < start[n]; c0 += gridDim.x * CHUNK) {
        long long j = array_of(start, n, c0);
        long long c1 = ll_min(c0 + CHUNK, start[n]);
        for (long long i = c0 + threadIdx.x; i < c1; i += blockDim.x) {
            while (i >= start[j + 1]) ++j;  // past the end of array j (skipping empty ones)
            body(j, i - start[j]);
        }
    }
}

// ---- 18. AdamW over every (param, grad, m, v) of the table (deers/fused/adamw.py) ---------------
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= (lr / bias1) m / (sqrt(v / bias2) + eps)       with bias_k = 1 - b_k^step
// Computed in the moments' type (float, or double for f64); parameters and gradients may be
// f16/bf16 with f32 moments.
template <typename P, typename M> struct AdamWElement {
    typedef typename Acc<M>::type A;
    const long long* table;
    A decay, b1, b2, step_size, inv_bias2, epsilon;
    __device__ void operator()(long long j, long long k) {
        P* param = table_array<P>(table, 0, j);
        const P* grad = table_array<P>(table, 1, j);
        M* m = table_array<M>(table, 2, j);
        M* v = table_array<M>(table, 3, j);
        A g = (A)load(grad[k]);
        A p = (A)load(param[k]) * decay;
        A mi = b1 * load(m[k]) + ((A)1 - b1) * g;
        A vi = b2 * load(v[k]) + ((A)1 - b2) * g * g;
        m[k] = store<M>(mi);
        v[k] = store<M>(vi);
        param[k] = Convert<P>::from(p - step_size * mi / (m_sqrt(vi * inv_bias2) + epsilon));
    }
};

template <typename P, typename M>
DEV void adamw_multi_body(const long long* table, double lr, double beta1, double beta2, double eps,
                          double weight_decay, double bias1, double bias2) {
    typedef typename Acc<M>::type A;
    AdamWElement<P, M> body = {table, (A)(1.0 - lr * weight_decay), (A)beta1, (A)beta2, (A)(lr / bias1),
                               (A)(1.0 / bias2), (A)eps};
    for_each_element(table, body);
}

// params, grads, exp_avgs, exp_avg_sqs of the table <- one AdamW step (P: parameter type, M: moment type)
#define ADAMW_KERNEL(P, PS, M, MS)                                                                  \
    extern "C" __global__ void adamw_##PS##_##MS(const long long* table, double lr, double beta1,   \
                                                 double beta2, double eps, double weight_decay,     \
                                                 double bias1, double bias2) {                      \
        adamw_multi_body<P, M>(table, lr, beta1, beta2, eps, weight_decay, bias1, bias2);           \
    }

ADAMW_KERNEL(float, f32, float, f32)
ADAMW_KERNEL(double, f64, double, f64)
ADAMW_KERNEL(f16_t, f16, f16_t, f16)
ADAMW_KERNEL(bf16_t, bf16, bf16_t, bf16)
ADAMW_KERNEL(f16_t, f16, float, f32)
ADAMW_KERNEL(bf16_t, bf16, float, f32)

// ---- 19. sum of squares over every array of the table, in two deterministic stages --------------
// Stage 1: block b sums x^2 over the chunks it takes (in a fixed order) into partial[first + b].
// Stage 2 (sum_partials): one block adds partial[0 .. count) in a fixed tree into out[0].
// No atomics: the same arrays give the same bits on every run.
template <typename T, typename A> struct SquareSum {
    const long long* table;
    A total;
    __device__ void operator()(long long j, long long k) {
        A x = (A)load(table_array<T>(table, 0, j)[k]);
        total += x * x;
    }
};

template <typename T, typename A>
DEV void sum_of_squares_body(const long long* table, A* partial, long long first) {
    __shared__ A scratch[32];
    SquareSum<T, A> body = {table, (A)0};
    for_each_element(table, body);
    A total = block_sum(body.total, scratch);
    if (threadIdx.x == 0) partial[first + blockIdx.x] = total;
}

template <typename A>
DEV void sum_partials_body(long long count, const A* partial, A* out) {
    __shared__ A scratch[32];
    A total = 0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) total += partial[i];
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) out[0] = total;
}

// partial[first + block] = sum of x^2 over the chunks of the table's arrays this block takes
#define SUM_OF_SQUARES_KERNEL(T, TS, A, AS)                                                               \
    extern "C" __global__ void sum_of_squares_##TS##_##AS(const long long* table, A* partial, long long first) { \
        sum_of_squares_body<T, A>(table, partial, first);                                                 \
    }

SUM_OF_SQUARES_KERNEL(float, f32, float, f32)
SUM_OF_SQUARES_KERNEL(f16_t, f16, float, f32)
SUM_OF_SQUARES_KERNEL(bf16_t, bf16, float, f32)
SUM_OF_SQUARES_KERNEL(double, f64, double, f64)
SUM_OF_SQUARES_KERNEL(float, f32, double, f64)
SUM_OF_SQUARES_KERNEL(f16_t, f16, double, f64)
SUM_OF_SQUARES_KERNEL(bf16_t, bf16, double, f64)

// out[0] = partial[0] + ... + partial[count - 1], in a fixed order (one block)
extern "C" __global__ void MAX_THREADS_1024 sum_partials_f32(long long count, const float* partial, float* out) {
    sum_partials_body<float>(count, partial, out);
}
// the same in double
extern "C" __global__ void MAX_THREADS_1024 sum_partials_f64(long long count, const double* partial, double* out) {
    sum_partials_body<double>(count, partial, out);
}

// ---- 20. every array of the table *= factor[0] (computed in float, double for f64 arrays) -------
template <typename T> struct ScaleElement {
    typedef typename Acc<T>::type A;
    const long long* table;
    A factor;
    __device__ void operator()(long long j, long long k) {
        T* x = table_array<T>(table, 0, j);
        x[k] = store<T>((A)load(x[k]) * factor);
    }
};

template <typename T, typename F>
DEV void scale_body(const long long* table, const F* factor) {
    typedef typename Acc<T>::type A;
    ScaleElement<T> body = {table, (A)factor[0]};
    for_each_element(table, body);
}

// every array of the table *= factor[0]
#define SCALE_KERNEL(T, TS, F, FS)                                                            \
    extern "C" __global__ void scale_##TS##_##FS(const long long* table, const F* factor) { \
        scale_body<T, F>(table, factor);                                                      \
    }

SCALE_KERNEL(float, f32, float, f32)
SCALE_KERNEL(double, f64, float, f32)
SCALE_KERNEL(f16_t, f16, float, f32)
SCALE_KERNEL(bf16_t, bf16, float, f32)
SCALE_KERNEL(float, f32, double, f64)
SCALE_KERNEL(double, f64, double, f64)
SCALE_KERNEL(f16_t, f16, double, f64)
SCALE_KERNEL(bf16_t, bf16, double, f64)
