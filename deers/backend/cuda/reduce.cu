// Reductions (contract item 9): sum, max, min and argmax over arbitrary axes. The host permutes
// the reduced axes last, so every reduction is "reduce each row of a (rows, cols) view" read
// through the row meta of common.cuh. Sums of f16/bf16 accumulate in float, of f32 in float (a
// block tree, not a running sum), of f64 in double.
#include "common.cuh"

// One block per (row, chunk): block b reduces columns [chunk * per, (chunk + 1) * per) of row
// b / split and writes out[b]; with split > 1 the host reduces the (rows, split) partials again.
template <typename T>
DEV void reduce_rows_body(int op, long long rows, long long cols, long long split, T* out, const T* a,
                          const long long* meta) {
    typedef typename Acc<T>::type A;
    __shared__ A scratch[32];
    long long blocks = rows * split;
    long long per = (cols + split - 1) / split;
    for (long long b = blockIdx.x; b < blocks; b += gridDim.x) {
        long long r = b / split;
        long long c0 = (b % split) * per;
        long long c1 = ll_min(cols, c0 + per);
        long long base = row_base(r, meta);
        A v = reduce_identity<A>(op);
        for (long long c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
            v = reduce_combine(op, v, load(a[base + col_offset(c, meta)]));
        }
        v = block_reduce(op, v, scratch);
        if (threadIdx.x == 0) out[b] = store<T>(v);
    }
}

// One thread per row, looping over its columns: used when the kept axes are innermost in memory
// (e.g. summing a (N, D) gradient over N), so neighbouring threads read neighbouring elements.
template <typename T>
DEV void reduce_cols_body(int op, long long rows, long long cols, T* out, const T* a, const long long* meta) {
    typedef typename Acc<T>::type A;
    for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < rows;
         r += (long long)gridDim.x * blockDim.x) {
        long long base = row_base(r, meta);
        A v = reduce_identity<A>(op);
        for (long long c = 0; c < cols; ++c) v = reduce_combine(op, v, load(a[base + col_offset(c, meta)]));
        out[r] = store<T>(v);
    }
}

// (value, index) pairs: the larger value wins, NaN beats everything, ties go to the smaller index
// (NumPy's argmax: the first occurrence of the maximum, or of the first NaN).
template <typename A> DEV bool argmax_takes_second(A v1, long long i1, A v2, long long i2) {
    bool nan1 = is_nan(v1), nan2 = is_nan(v2);
    if (nan1 || nan2) return (nan1 && nan2) ? i2 < i1 : nan2;
    if (v1 != v2) return v2 > v1;
    return i2 < i1;
}

// out[r] = index of the largest element of row r (one block per row).
template <typename T>
DEV void argmax_rows_body(long long rows, long long cols, long long* out, const T* a, const long long* meta) {
    typedef typename Acc<T>::type A;
    __shared__ A values[32];
    __shared__ long long indices[32];
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        long long base = row_base(r, meta);
        A best = neg_inf(A());
        long long at = cols;  // sentinel: loses every tie against a real element
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            A x = load(a[base + col_offset(c, meta)]);
            if (argmax_takes_second(best, at, x, c)) { best = x; at = c; }
        }
        for (int round = 0; round < 2; ++round) {  // reduce within warps, then across the warp winners
            for (int mask = 16; mask > 0; mask >>= 1) {
                A other = __shfl_xor_sync(FULL_MASK, best, mask);
                long long other_at = __shfl_xor_sync(FULL_MASK, at, mask);
                if (argmax_takes_second(best, at, other, other_at)) { best = other; at = other_at; }
            }
            if (round == 1) break;
            __syncthreads();
            if (lane == 0) { values[warp] = best; indices[warp] = at; }
            __syncthreads();
            best = lane < warps ? values[lane] : neg_inf(A());
            at = lane < warps ? indices[lane] : cols;
        }
        if (threadIdx.x == 0) out[r] = at;
    }
}

#define REDUCE_KERNELS(T, SUFFIX)                                                                       \
    /* out[b] = sum/max/min of row chunk b (one block each) */                                          \
    extern "C" __global__ void reduce_rows_##SUFFIX(int op, long long rows, long long cols,             \
                                                    long long split, T* out, const T* a,                \
                                                    const long long* meta) {                            \
        reduce_rows_body<T>(op, rows, cols, split, out, a, meta);                                       \
    }                                                                                                   \
    /* out[r] = sum/max/min of row r (one thread each) */                                               \
    extern "C" __global__ void reduce_cols_##SUFFIX(int op, long long rows, long long cols, T* out,     \
                                                    const T* a, const long long* meta) {                \
        reduce_cols_body<T>(op, rows, cols, out, a, meta);                                              \
    }                                                                                                   \
    /* out[r] = index of the first maximum of row r */                                                  \
    extern "C" __global__ void argmax_rows_##SUFFIX(long long rows, long long cols, long long* out,     \
                                                    const T* a, const long long* meta) {                \
        argmax_rows_body<T>(rows, cols, out, a, meta);                                                  \
    }

REDUCE_KERNELS(f16_t, f16)
REDUCE_KERNELS(bf16_t, bf16)
REDUCE_KERNELS(float, f32)
REDUCE_KERNELS(double, f64)
REDUCE_KERNELS(long long, i64)
