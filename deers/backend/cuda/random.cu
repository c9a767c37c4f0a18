// Random numbers (contract item 3) from the counter-based Philox4x32-10 generator (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011). Element i of a call uses the counter
// offset + i under the key (seed): the generator state is just (seed, offset), which the host
// advances by n after each call, so it is cheap to save and restore and independent of the launch
// shape. Distributions: uniform [0, 1) from 24 (53 for f64) random bits; normal by Box-Muller.
#include "common.cuh"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// Philox4x32-10 of the 128-bit counter (counter, 0) under the key (key0, key1): four random words.
DEV void philox(unsigned long long counter, unsigned int key0, unsigned int key1, unsigned int* out) {
    unsigned int c0 = (unsigned int)counter, c1 = (unsigned int)(counter >> 32), c2 = 0, c3 = 0;
    for (int round = 0; round < 10; ++round) {
        unsigned long long p0 = (unsigned long long)PHILOX_M0 * c0;
        unsigned long long p1 = (unsigned long long)PHILOX_M1 * c2;
        unsigned int n0 = (unsigned int)(p1 >> 32) ^ c1 ^ key0;
        unsigned int n2 = (unsigned int)(p0 >> 32) ^ c3 ^ key1;
        c1 = (unsigned int)p1;
        c3 = (unsigned int)p0;
        c0 = n0;
        c2 = n2;
        key0 += PHILOX_W0;
        key1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

DEV float unit_float(unsigned int bits) { return (float)(bits >> 8) * (1.0f / 16777216.0f); }  // [0, 1)
DEV double unit_double(unsigned int hi, unsigned int lo) {  // [0, 1) with 53 bits
    return ((double)(hi >> 5) * 67108864.0 + (double)(lo >> 6)) * (1.0 / 9007199254740992.0);
}

DEV float uniform_value(const unsigned int* r, float) { return unit_float(r[0]); }
DEV double uniform_value(const unsigned int* r, double) { return unit_double(r[0], r[1]); }

DEV float normal_value(const unsigned int* r, float) {  // Box-Muller; u1 in (0, 1] keeps log finite
    float u1 = 1.0f - unit_float(r[0]);
    float u2 = unit_float(r[1]);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864769f * u2);
}
DEV double normal_value(const unsigned int* r, double) {
    double u1 = 1.0 - unit_double(r[0], r[1]);
    double u2 = unit_double(r[2], r[3]);
    return sqrt(-2.0 * log(u1)) * cos(6.2831853071795864769 * u2);
}

#define GRID_LOOP(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

#define RANDOM_FLOAT_KERNELS(T, A, SUFFIX)                                                              \
    /* out[i] = uniform [0, 1) from Philox counter offset + i */                                        \
    extern "C" __global__ void random_uniform_##SUFFIX(long long n, T* out, unsigned int key0,          \
                                                       unsigned int key1, unsigned long long offset) {  \
        GRID_LOOP(i, n) {                                                                               \
            unsigned int r[4];                                                                          \
            philox(offset + (unsigned long long)i, key0, key1, r);                                      \
            out[i] = store<T>(uniform_value(r, (A)0));                                                  \
        }                                                                                               \
    }                                                                                                   \
    /* out[i] = standard normal (Box-Muller) from Philox counter offset + i */                          \
    extern "C" __global__ void random_normal_##SUFFIX(long long n, T* out, unsigned int key0,           \
                                                      unsigned int key1, unsigned long long offset) {   \
        GRID_LOOP(i, n) {                                                                               \
            unsigned int r[4];                                                                          \
            philox(offset + (unsigned long long)i, key0, key1, r);                                      \
            out[i] = store<T>(normal_value(r, (A)0));                                                   \
        }                                                                                               \
    }

RANDOM_FLOAT_KERNELS(f16_t, float, f16)
RANDOM_FLOAT_KERNELS(bf16_t, float, bf16)
RANDOM_FLOAT_KERNELS(float, float, f32)
RANDOM_FLOAT_KERNELS(double, double, f64)

// out[i] = low + (64 random bits mod range): uniform integers in [low, low + range).
extern "C" __global__ void random_int_i64(long long n, long long* out, unsigned int key0, unsigned int key1,
                                          unsigned long long offset, long long low, unsigned long long range) {
    GRID_LOOP(i, n) {
        unsigned int r[4];
        philox(offset + (unsigned long long)i, key0, key1, r);
        unsigned long long bits = ((unsigned long long)r[1] << 32) | r[0];
        out[i] = low + (long long)(bits % range);
    }
}
