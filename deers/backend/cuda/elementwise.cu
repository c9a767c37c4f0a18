// Element-wise kernels over strided layouts (contract items 1, 4-8, 13): unary math, binary
// arithmetic, comparisons, operations with a scalar, where, fill, and copy/cast between any two
// dtypes. Every kernel is a grid-stride loop over the n output elements; operands are read through
// the element-wise meta described in common.cuh (ndim == 0: contiguous fast path). Results are
// written contiguously, except copy, whose destination is strided too.
//
// Op codes (kept in sync with deers/backend/cuda/plan.py, checked by the tests):
#include "common.cuh"

#define UNARY_NEG 0
#define UNARY_EXP 1
#define UNARY_LOG 2
#define UNARY_SQRT 3
#define UNARY_SIN 5
#define UNARY_COS 6
#define UNARY_TANH 7
#define UNARY_SIGMOID 8
#define UNARY_RELU 9
#define UNARY_ABS 10
#define UNARY_SIGN 11
#define UNARY_BITWISE_NOT 12
#define UNARY_SOFTPLUS 13

#define BINARY_ADD 0
#define BINARY_SUB 1
#define BINARY_MUL 2
#define BINARY_DIV 3
#define BINARY_POW 4
#define BINARY_MAXIMUM 5
#define BINARY_MINIMUM 6
#define BINARY_FLOOR_DIVIDE 7
#define BINARY_REMAINDER 8
#define BINARY_BITWISE_AND 9
#define BINARY_BITWISE_OR 10
#define BINARY_BITWISE_XOR 11

#define COMPARE_EQ 0
#define COMPARE_NE 1
#define COMPARE_LT 2
#define COMPARE_LE 3
#define COMPARE_GT 4
#define COMPARE_GE 5

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

template <typename A> DEV A unary_float(int op, A x) {
    switch (op) {
        case UNARY_NEG: return -x;
        case UNARY_EXP: return m_exp(x);
        case UNARY_LOG: return m_log(x);
        case UNARY_SQRT: return m_sqrt(x);
        case UNARY_SIN: return m_sin(x);
        case UNARY_COS: return m_cos(x);
        case UNARY_TANH: return m_tanh(x);
        case UNARY_SIGMOID: return m_tanh(x * (A)0.5) * (A)0.5 + (A)0.5;  // never overflows
        case UNARY_RELU: return (is_nan(x) || x > (A)0) ? x : (A)0;
        case UNARY_ABS: return m_abs(x);
        case UNARY_SIGN: return is_nan(x) ? x : (A)((x > (A)0) - (x < (A)0));
        case UNARY_SOFTPLUS: return (x > (A)0 ? x : (A)0) + m_log1p(m_exp(-m_abs(x)));  // log(1 + e^x), never overflows
    }
    return x;
}

template <typename A> DEV A unary_int(int op, A x) {
    switch (op) {
        case UNARY_NEG: return -x;
        case UNARY_RELU: return x > 0 ? x : 0;
        case UNARY_ABS: return x < 0 ? -x : x;
        case UNARY_SIGN: return (A)((x > 0) - (x < 0));
        case UNARY_BITWISE_NOT: return ~x;  // u8 computes in int: the store keeps the low 8 bits
    }
    return x;
}

// Python's // and % on floats (as PyTorch): the quotient from fmod, so that a = q b + r exactly
// where floor(a / b) would round the division first (1 // 0.1 is 9, floor(1 / 0.1) is 10);
// the remainder has b's sign. Division by 0 gives IEEE's a / b (inf or nan) and fmod's nan.
template <typename A> DEV A floor_divide_float(A a, A b) {
    if (b == (A)0) return a / b;
    A mod = m_fmod(a, b);
    A q = (a - mod) / b;
    if (mod != (A)0 && ((b < (A)0) != (mod < (A)0))) q -= (A)1;
    if (q == (A)0) return m_copysign((A)0, a / b);
    A floored = m_floor(q);
    return q - floored > (A)0.5 ? floored + (A)1 : floored;  // q is an integer up to rounding
}

template <typename A> DEV A remainder_float(A a, A b) {
    A mod = m_fmod(a, b);
    return (mod != (A)0 && ((b < (A)0) != (mod < (A)0))) ? mod + b : mod;
}

// Python's // and % on integers: C truncates toward 0, so a quotient with a nonzero remainder of
// the other sign steps down by one. Division by 0 is undefined (the CPU backend raises
// ZeroDivisionError; PyTorch's CUDA gives no error either): 0 here, never a trap. b = -1 is
// done as a negation, so the most negative i64 wraps instead of trapping.
template <typename A> DEV A floor_divide_int(A a, A b) {
    if (b == 0) return 0;
    if (b == -1) return (A)(0ULL - (unsigned long long)a);
    A q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

template <typename A> DEV A remainder_int(A a, A b) {
    if (b == 0 || b == -1) return 0;
    A r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

template <typename A> DEV A binary_float(int op, A a, A b) {
    switch (op) {
        case BINARY_ADD: return a + b;
        case BINARY_SUB: return a - b;
        case BINARY_MUL: return a * b;
        case BINARY_DIV: return a / b;
        case BINARY_POW: return m_pow(a, b);
        case BINARY_MAXIMUM: return nan_max(a, b);
        case BINARY_MINIMUM: return nan_min(a, b);
        case BINARY_FLOOR_DIVIDE: return floor_divide_float(a, b);
        case BINARY_REMAINDER: return remainder_float(a, b);
    }
    return a;
}

template <typename A> DEV A binary_int(int op, A a, A b) {
    switch (op) {
        case BINARY_ADD: return a + b;
        case BINARY_SUB: return a - b;
        case BINARY_MUL: return a * b;
        case BINARY_MAXIMUM: return a > b ? a : b;
        case BINARY_MINIMUM: return a < b ? a : b;
        case BINARY_FLOOR_DIVIDE: return floor_divide_int(a, b);
        case BINARY_REMAINDER: return remainder_int(a, b);
        case BINARY_BITWISE_AND: return a & b;
        case BINARY_BITWISE_OR: return a | b;
        case BINARY_BITWISE_XOR: return a ^ b;
    }
    return a;
}

template <typename A> DEV bool compare(int op, A a, A b) {
    switch (op) {
        case COMPARE_EQ: return a == b;
        case COMPARE_NE: return a != b;
        case COMPARE_LT: return a < b;
        case COMPARE_LE: return a <= b;
        case COMPARE_GT: return a > b;
        case COMPARE_GE: return a >= b;
    }
    return false;
}

// out[i] = f(a[i]) for the float unary ops (f16/bf16 computed in float).
#define UNARY_FLOAT_KERNEL(T, SUFFIX)                                                                   \
    extern "C" __global__ void unary_##SUFFIX(int op, long long n, T* out, const T* a,                  \
                                              const long long* meta) {                                  \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[1];                                                                           \
            strided_offsets<1>(i, meta, off);                                                           \
            out[i] = store<T>(unary_float(op, load(a[off[0]])));                                        \
        }                                                                                               \
    }

// out[i] = f(a[i]) for the integer unary ops (neg, relu, abs, sign, bitwise_not; bool's not: the host
// runs it as a ^ true).
#define UNARY_INT_KERNEL(T, SUFFIX)                                                                     \
    extern "C" __global__ void unary_##SUFFIX(int op, long long n, T* out, const T* a,                  \
                                              const long long* meta) {                                  \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[1];                                                                           \
            strided_offsets<1>(i, meta, off);                                                           \
            out[i] = store<T>(unary_int(op, load(a[off[0]])));                                          \
        }                                                                                               \
    }

// out[i] = a[i] OP b[i] for the BINARY_* ops (BODY: binary_float or binary_int).
#define BINARY_KERNEL(T, SUFFIX, BODY)                                                                  \
    extern "C" __global__ void binary_##SUFFIX(int op, long long n, T* out, const T* a, const T* b,     \
                                               const long long* meta) {                                 \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[2];                                                                           \
            strided_offsets<2>(i, meta, off);                                                           \
            out[i] = store<T>(BODY(op, load(a[off[0]]), load(b[off[1]])));                              \
        }                                                                                               \
    }

// out[i] = a[i] OP value, or value OP a[i] when reverse (value already in the compute type).
#define SCALAR_KERNEL(T, A, SUFFIX, BODY)                                                               \
    extern "C" __global__ void scalar_##SUFFIX(int op, long long n, T* out, const T* a, A value,        \
                                               int reverse, const long long* meta) {                    \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[1];                                                                           \
            strided_offsets<1>(i, meta, off);                                                           \
            A x = load(a[off[0]]);                                                                      \
            out[i] = store<T>(reverse ? BODY(op, value, x) : BODY(op, x, value));                       \
        }                                                                                               \
    }

// out[i] = a[i] CMP b[i] (bool result).
#define COMPARE_KERNEL(T, SUFFIX)                                                                       \
    extern "C" __global__ void compare_##SUFFIX(int op, long long n, bool* out, const T* a, const T* b, \
                                                const long long* meta) {                                \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[2];                                                                           \
            strided_offsets<2>(i, meta, off);                                                           \
            out[i] = compare(op, load(a[off[0]]), load(b[off[1]]));                                     \
        }                                                                                               \
    }

// out[i] = a[i] CMP value (bool result; the host flips the op for value CMP a[i]).
#define COMPARE_SCALAR_KERNEL(T, A, SUFFIX)                                                             \
    extern "C" __global__ void compare_scalar_##SUFFIX(int op, long long n, bool* out, const T* a,      \
                                                       A value, const long long* meta) {                \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[1];                                                                           \
            strided_offsets<1>(i, meta, off);                                                           \
            out[i] = compare(op, load(a[off[0]]), value);                                               \
        }                                                                                               \
    }

// out[i] = c[i] ? a[i] : b[i].
#define WHERE_KERNEL(T, SUFFIX)                                                                         \
    extern "C" __global__ void where_##SUFFIX(long long n, T* out, const bool* c, const T* a,           \
                                              const T* b, const long long* meta) {                      \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[3];                                                                           \
            strided_offsets<3>(i, meta, off);                                                           \
            out[i] = c[off[0]] ? a[off[1]] : b[off[2]];                                                 \
        }                                                                                               \
    }

// out[i] = value for a contiguous buffer.
#define FILL_KERNEL(T, A, SUFFIX)                                                                       \
    extern "C" __global__ void fill_##SUFFIX(long long n, T* out, A value) {                            \
        T v = store<T>(value);                                                                          \
        GRID_STRIDE_LOOP(i, n) { out[i] = v; }                                                          \
    }

// dst[view] = convert(src[view]): operand 0 of the meta is dst, operand 1 is src.
#define COPY_KERNEL(S, SS, D, DS)                                                                       \
    extern "C" __global__ void copy_##SS##_##DS(long long n, D* dst, const S* src,                      \
                                                const long long* meta) {                                \
        GRID_STRIDE_LOOP(i, n) {                                                                        \
            long long off[2];                                                                           \
            strided_offsets<2>(i, meta, off);                                                           \
            dst[off[0]] = Convert<D>::from(load(src[off[1]]));                                          \
        }                                                                                               \
    }

// T: storage type, A: its compute type (Acc<T>::type), SUFFIX: the dtype's name in kernel names
#define FLOAT_KERNELS(T, A, SUFFIX)           \
    UNARY_FLOAT_KERNEL(T, SUFFIX)             \
    BINARY_KERNEL(T, SUFFIX, binary_float)    \
    SCALAR_KERNEL(T, A, SUFFIX, binary_float)

#define INT_KERNELS(T, A, SUFFIX)             \
    BINARY_KERNEL(T, SUFFIX, binary_int)      \
    SCALAR_KERNEL(T, A, SUFFIX, binary_int)

#define ALL_TYPE_KERNELS(T, A, SUFFIX)        \
    COMPARE_KERNEL(T, SUFFIX)                 \
    COMPARE_SCALAR_KERNEL(T, A, SUFFIX)       \
    WHERE_KERNEL(T, SUFFIX)                   \
    FILL_KERNEL(T, A, SUFFIX)

FLOAT_KERNELS(f16_t, float, f16)
FLOAT_KERNELS(bf16_t, float, bf16)
FLOAT_KERNELS(float, float, f32)
FLOAT_KERNELS(double, double, f64)
UNARY_INT_KERNEL(long long, i64)
UNARY_INT_KERNEL(unsigned char, u8)
INT_KERNELS(long long, long long, i64)
INT_KERNELS(unsigned char, int, u8)
INT_KERNELS(bool, int, bool)

ALL_TYPE_KERNELS(f16_t, float, f16)
ALL_TYPE_KERNELS(bf16_t, float, bf16)
ALL_TYPE_KERNELS(float, float, f32)
ALL_TYPE_KERNELS(double, double, f64)
ALL_TYPE_KERNELS(long long, long long, i64)
ALL_TYPE_KERNELS(unsigned char, int, u8)
ALL_TYPE_KERNELS(bool, int, bool)

// copy/cast from every source dtype to every destination dtype
#define COPY_FROM(S, SS)                      \
    COPY_KERNEL(S, SS, f16_t, f16)            \
    COPY_KERNEL(S, SS, bf16_t, bf16)          \
    COPY_KERNEL(S, SS, float, f32)            \
    COPY_KERNEL(S, SS, double, f64)           \
    COPY_KERNEL(S, SS, long long, i64)        \
    COPY_KERNEL(S, SS, unsigned char, u8)     \
    COPY_KERNEL(S, SS, bool, bool)

COPY_FROM(f16_t, f16)
COPY_FROM(bf16_t, bf16)
COPY_FROM(float, f32)
COPY_FROM(double, f64)
COPY_FROM(long long, i64)
COPY_FROM(unsigned char, u8)
COPY_FROM(bool, bool)
