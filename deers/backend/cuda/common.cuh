// Shared pieces of the Deers CUDA kernels: element types, conversions, strided indexing, block
// reductions. Included by every .cu file in this folder; compiled at run time by NVRTC (through
// CuPy's RawModule), so it uses no standard headers.
//
// 16-bit floats are stored as plain 16-bit words (f16_t, bf16_t) and converted with integer bit
// operations (round to nearest even), so the same code compiles for the GPU and, in the tests,
// as plain C++ on the CPU. All arithmetic on them happens in float: Acc<T>::type is the type a
// kernel computes and accumulates in (float for f16/bf16/f32, double for f64, long long for i64,
// int for u8/bool).
#pragma once

#define DEV static __device__ __forceinline__
// Kernels launched with up to 1024 threads per block (plan.row_launch(..., cap=1024)): the compiler
// keeps them within the 64 registers per thread that a 1024-thread block may use.
#define MAX_THREADS_1024 __launch_bounds__(1024)
#define FULL_MASK 0xffffffffu

struct f16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

// ---- bit casts --------------------------------------------------------------------------------
DEV unsigned int f32_bits(float x) { return __float_as_uint(x); }
DEV float f32_from_bits(unsigned int u) { return __uint_as_float(u); }
DEV float f32_inf() { return __uint_as_float(0x7f800000u); }
DEV double f64_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
DEV float f32_nan() { return __uint_as_float(0x7fc00000u); }
DEV double f64_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// ---- 16-bit float conversions (round to nearest even; NaN stays NaN, overflow goes to inf) ------
// f16 -> f32: exact (rebias the exponent; subnormals through one float subtraction).
DEV float f16_to_f32(unsigned short h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int body = ((unsigned int)h & 0x7fffu) << 13;  // exponent and mantissa in f32 position
    unsigned int exponent = body & 0x0f800000u;
    body += (127u - 15u) << 23;
    if (exponent == 0x0f800000u) {  // inf or NaN
        body += (128u - 16u) << 23;
    } else if (exponent == 0) {  // zero or subnormal: renormalise with a float subtraction
        body += 1u << 23;
        body = f32_bits(f32_from_bits(body) - f32_from_bits(113u << 23));
    }
    return f32_from_bits(body | sign);
}

// f32 -> f16: round to nearest even; values from 65520 up become inf.
DEV unsigned short f32_to_f16(float f) {
    unsigned int x = f32_bits(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    unsigned int h;
    if (x >= 0x47800000u) {  // >= 65536, inf or NaN
        h = (x > 0x7f800000u) ? 0x7e00u : 0x7c00u;
    } else if (x < 0x38800000u) {  // below the smallest normal f16 (2^-14): subnormal or zero
        // adding 0.5 aligns the f16 subnormal bits at the bottom of the f32 mantissa, rounding once
        h = f32_bits(f32_from_bits(x) + 0.5f) - 0x3f000000u;
    } else {
        unsigned int odd = (x >> 13) & 1u;
        x += ((15u - 127u) << 23) + 0xfffu + odd;  // rebias and round half to even
        h = x >> 13;
    }
    return (unsigned short)(h | sign);
}

DEV float bf16_to_f32(unsigned short b) { return f32_from_bits((unsigned int)b << 16); }

// f32 -> bf16: round to nearest even on the upper 16 bits; NaN becomes a quiet NaN.
DEV unsigned short f32_to_bf16(float f) {
    unsigned int x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x0040u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}

// ---- the compute type of each storage type ------------------------------------------------------
template <typename T> struct Acc;
template <> struct Acc<f16_t> { typedef float type; };
template <> struct Acc<bf16_t> { typedef float type; };
template <> struct Acc<float> { typedef float type; };
template <> struct Acc<double> { typedef double type; };
template <> struct Acc<long long> { typedef long long type; };
template <> struct Acc<unsigned char> { typedef int type; };
template <> struct Acc<bool> { typedef int type; };

DEV float load(f16_t x) { return f16_to_f32(x.bits); }
DEV float load(bf16_t x) { return bf16_to_f32(x.bits); }
DEV float load(float x) { return x; }
DEV double load(double x) { return x; }
DEV long long load(long long x) { return x; }
DEV int load(unsigned char x) { return (int)x; }
DEV int load(bool x) { return x ? 1 : 0; }

// store<T>(v): the compute-type value v rounded/converted to storage type T.
template <typename T> DEV T store(typename Acc<T>::type v);
template <> __device__ __forceinline__ f16_t store<f16_t>(float v) { f16_t r; r.bits = f32_to_f16(v); return r; }
template <> __device__ __forceinline__ bf16_t store<bf16_t>(float v) { bf16_t r; r.bits = f32_to_bf16(v); return r; }
template <> __device__ __forceinline__ float store<float>(float v) { return v; }
template <> __device__ __forceinline__ double store<double>(double v) { return v; }
template <> __device__ __forceinline__ long long store<long long>(long long v) { return v; }
template <> __device__ __forceinline__ unsigned char store<unsigned char>(int v) { return (unsigned char)v; }
template <> __device__ __forceinline__ bool store<bool>(int v) { return v != 0; }

// convert<D>(v): any compute-type value to storage type D, like a C cast (bool: v != 0).
template <typename D> struct Convert {
    template <typename V> static __device__ __forceinline__ D from(V v) {
        return store<D>((typename Acc<D>::type)v);
    }
};
template <> struct Convert<bool> {
    template <typename V> static __device__ __forceinline__ bool from(V v) { return v != 0; }
};
template <> struct Convert<f16_t> {  // f64 -> f16 goes through f32 (rounds twice; off by 1 ulp at most)
    template <typename V> static __device__ __forceinline__ f16_t from(V v) { return store<f16_t>((float)v); }
};

// ---- math in the compute type -------------------------------------------------------------------
DEV float m_exp(float x) { return expf(x); }
DEV double m_exp(double x) { return exp(x); }
DEV float m_log(float x) { return logf(x); }
DEV double m_log(double x) { return log(x); }
DEV float m_log1p(float x) { return log1pf(x); }
DEV double m_log1p(double x) { return log1p(x); }
DEV float m_sqrt(float x) { return sqrtf(x); }
DEV double m_sqrt(double x) { return sqrt(x); }
DEV float m_sin(float x) { return sinf(x); }
DEV double m_sin(double x) { return sin(x); }
DEV float m_cos(float x) { return cosf(x); }
DEV double m_cos(double x) { return cos(x); }
DEV float m_tanh(float x) { return tanhf(x); }
DEV double m_tanh(double x) { return tanh(x); }
DEV float m_pow(float x, float y) { return powf(x, y); }
DEV double m_pow(double x, double y) { return pow(x, y); }
DEV float m_abs(float x) { return fabsf(x); }
DEV double m_abs(double x) { return fabs(x); }
DEV float m_fmod(float x, float y) { return fmodf(x, y); }
DEV double m_fmod(double x, double y) { return fmod(x, y); }
DEV float m_floor(float x) { return floorf(x); }
DEV double m_floor(double x) { return floor(x); }
DEV float m_copysign(float x, float y) { return copysignf(x, y); }
DEV double m_copysign(double x, double y) { return copysign(x, y); }
DEV float neg_inf(float) { return -f32_inf(); }
DEV double neg_inf(double) { return -f64_inf(); }
DEV long long neg_inf(long long) { return -9223372036854775807LL - 1; }
DEV int neg_inf(int) { return -2147483647 - 1; }
DEV float pos_inf(float) { return f32_inf(); }
DEV double pos_inf(double) { return f64_inf(); }
DEV long long pos_inf(long long) { return 9223372036854775807LL; }
DEV int pos_inf(int) { return 2147483647; }

template <typename A> DEV bool is_nan(A x) { return x != x; }
// NumPy's maximum/minimum: a NaN operand wins
template <typename A> DEV A nan_max(A a, A b) { return is_nan(a) ? a : (is_nan(b) ? b : (a > b ? a : b)); }
template <typename A> DEV A nan_min(A a, A b) { return is_nan(a) ? a : (is_nan(b) ? b : (a < b ? a : b)); }

DEV long long ll_min(long long a, long long b) { return a < b ? a : b; }

// ---- deferred errors ------------------------------------------------------------------------------
// A kernel that meets an out-of-range index records it in the backend's error flag, 3 int64s
// [set, value, call]: the first thread to claim flag[0] writes the offending value and the host's
// number for this launch. The host reads the flag at its next sync point and raises IndexError there,
// so no launch waits for the device.
DEV void flag_index_error(long long* flag, long long value, long long call) {
    if (atomicCAS((unsigned long long*)flag, 0ull, 1ull) == 0ull) {
        flag[1] = value;
        flag[2] = call;
    }
}

// ---- strided indexing ---------------------------------------------------------------------------
// Element-wise meta (int64): [ndim, shape[ndim], then per operand k: offset_k, strides_k[ndim]].
// ndim == 0 is the contiguous fast path: operand k's element i is at offset_k + i.
template <int N>
DEV void strided_offsets(long long i, const long long* meta, long long* off) {
    int ndim = (int)meta[0];
    const long long* shape = meta + 1;
    for (int k = 0; k < N; ++k) off[k] = meta[1 + ndim + k * (ndim + 1)];
    if (ndim == 0) {
        for (int k = 0; k < N; ++k) off[k] += i;
        return;
    }
    for (int d = ndim - 1; d >= 0; --d) {
        long long size = shape[d];
        long long coord = i % size;
        i /= size;
        for (int k = 0; k < N; ++k) off[k] += coord * meta[1 + ndim + k * (ndim + 1) + 1 + d];
    }
}

// Row meta (int64), for kernels that work row by row (reductions, softmax):
//   [n_outer, outer_shape[n_outer], outer_strides[n_outer],
//    n_inner, inner_shape[n_inner], inner_strides[n_inner], offset]
// Row r starts at row_base(r); element c of a row is at row_base(r) + col_offset(c).
DEV long long row_base(long long r, const long long* meta) {
    int n = (int)meta[0];
    int n_inner = (int)meta[1 + 2 * n];
    long long off = meta[2 + 2 * n + 2 * n_inner];
    for (int d = n - 1; d >= 0; --d) {
        long long size = meta[1 + d];
        off += (r % size) * meta[1 + n + d];
        r /= size;
    }
    return off;
}

DEV long long col_offset(long long c, const long long* meta) {
    int n = (int)meta[0];
    const long long* inner = meta + 1 + 2 * n;
    int n_inner = (int)inner[0];
    if (n_inner == 1) return c * inner[2];
    long long off = 0;
    for (int d = n_inner - 1; d >= 0; --d) {
        long long size = inner[1 + d];
        off += (c % size) * inner[1 + n_inner + d];
        c /= size;
    }
    return off;
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024; every thread must call) ----------
#define REDUCE_SUM 0
#define REDUCE_MAX 1
#define REDUCE_MIN 2

template <typename A> DEV A reduce_identity(int op) {
    if (op == REDUCE_MAX) return neg_inf(A());
    if (op == REDUCE_MIN) return pos_inf(A());
    return (A)0;
}

template <typename A> DEV A reduce_combine(int op, A a, A b) {
    if (op == REDUCE_MAX) return nan_max(a, b);
    if (op == REDUCE_MIN) return nan_min(a, b);
    return a + b;
}

template <typename A> DEV A warp_reduce(int op, A v) {
    for (int mask = 16; mask > 0; mask >>= 1) v = reduce_combine(op, v, __shfl_xor_sync(FULL_MASK, v, mask));
    return v;
}

// Every thread gets the block's total. `scratch` is __shared__ A[32] owned by the caller.
template <typename A> DEV A block_reduce(int op, A v, A* scratch) {
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    v = warp_reduce(op, v);
    __syncthreads();  // the previous call's readers are done with scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : reduce_identity<A>(op);
    return warp_reduce(op, v);
}

template <typename A> DEV A block_sum(A v, A* scratch) { return block_reduce(REDUCE_SUM, v, scratch); }
template <typename A> DEV A block_max(A v, A* scratch) { return block_reduce(REDUCE_MAX, v, scratch); }
