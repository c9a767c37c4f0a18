// Rotary position embedding, rotate-half convention (docs/design.md), on x of shape (..., T, hd) in
// any strided layout, with (T, hd) cos/sin tables whose two halves repeat ([c, c]):
//   forward   y1 = x1 c - x2 s,  y2 = x2 c + x1 s     (x1 = x[..., :hd/2], x2 = x[..., hd/2:])
//   inverse   y1 = x1 c + x2 s,  y2 = x2 c - x1 s     (the transpose: the backward of forward)
// One thread per (row, j < hd/2) pair; the output is contiguous.
#include "common.cuh"

template <typename T>
DEV void rope_body(long long pairs, long long seq_len, long long hd, T* out, const T* x, const long long* meta,
                   const T* cos_table, const T* sin_table, int inverse) {
    typedef typename Acc<T>::type A;
    long long half = hd / 2;
    A sign = inverse ? (A)-1 : (A)1;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < pairs;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / half;
        long long j = i % half;
        long long t = r % seq_len;  // rows run over (..., T): the position is the row index mod T
        long long base = row_base(r, meta);
        A x1 = load(x[base + col_offset(j, meta)]);
        A x2 = load(x[base + col_offset(j + half, meta)]);
        A c = load(cos_table[t * hd + j]);
        A s = load(sin_table[t * hd + j]) * sign;
        out[r * hd + j] = store<T>(x1 * c - x2 * s);
        out[r * hd + j + half] = store<T>(x2 * c + x1 * s);
    }
}

// out = x rotated by the position tables (inverse: by their transpose)
#define ROPE_KERNEL(T, SUFFIX)                                                                          \
    extern "C" __global__ void rope_##SUFFIX(long long pairs, long long seq_len, long long hd, T* out,  \
                                             const T* x, const long long* meta, const T* cos_table,     \
                                             const T* sin_table, int inverse) {                         \
        rope_body<T>(pairs, seq_len, hd, out, x, meta, cos_table, sin_table, inverse);                  \
    }

ROPE_KERNEL(f16_t, f16)
ROPE_KERNEL(bf16_t, bf16)
ROPE_KERNEL(float, f32)
ROPE_KERNEL(double, f64)
