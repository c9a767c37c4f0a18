// Indexing kernels (contract items 11-12) with device-side bounds checks: index_select, gather
// (index_copy: the index picks where to read) and index_add / embedding backward, scatter_add
// (index_accumulate: the index picks where to add, with atomicAdd). An index outside [0, size) —
// negative ones too: indices never wrap — is recorded in the error flag (flag_index_error in
// common.cuh) and its element is skipped; the host raises the IndexError at its next sync point.
//
// Index meta (int64): [ndim, dim, size_dim, shape[ndim], read_offset, read_strides[ndim],
//                      write_offset, write_strides[ndim]]
// The loop runs over `shape`. index_select / index_add read their index at the coordinate along
// `dim` (per_element = 0); gather / scatter_add read it at the element itself (per_element = 1).
#include "common.cuh"

// The read and write offsets of element i; `coord` is its coordinate along dim.
DEV void index_offsets(long long i, const long long* meta, long long* read_off, long long* write_off,
                       long long* coord) {
    int ndim = (int)meta[0];
    int dim = (int)meta[1];
    const long long* shape = meta + 3;
    const long long* read = meta + 3 + ndim;
    const long long* write = read + 1 + ndim;
    long long r = read[0];
    long long w = write[0];
    for (int d = ndim - 1; d >= 0; --d) {
        long long c = i % shape[d];
        i /= shape[d];
        if (d == dim) {
            *coord = c;
        } else {
            r += c * read[1 + d];
            w += c * write[1 + d];
        }
    }
    *read_off = r;
    *write_off = w;
}

// The index value for element i, or -1 (and the error flagged) when it is outside [0, size_dim).
DEV long long checked_index(long long i, long long coord, const long long* idx, int per_element,
                            long long size_dim, long long* flag, long long call) {
    long long v = idx[per_element ? i : coord];
    if (v < 0 || v >= size_dim) {
        flag_index_error(flag, v, call);
        return -1;
    }
    return v;
}

DEV void atomic_accumulate(float* p, float v) { atomicAdd(p, v); }
DEV void atomic_accumulate(double* p, double v) { atomicAdd(p, v); }
DEV void atomic_accumulate(long long* p, long long v) {
    atomicAdd((unsigned long long*)p, (unsigned long long)v);  // two's complement: same bits as signed add
}

// dst[write(coords)] = src[read(coords with coords[dim] = index)]; out-of-range elements get 0.
template <typename T>
DEV void index_copy_body(long long n, T* dst, const T* src, const long long* idx, const long long* meta,
                         int per_element, long long* flag, long long call) {
    int dim = (int)meta[1];
    long long size_dim = meta[2];
    int ndim = (int)meta[0];
    long long read_stride = meta[3 + ndim + 1 + dim];
    long long write_stride = meta[3 + ndim + 1 + ndim + 1 + dim];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r, w, coord = 0;
        index_offsets(i, meta, &r, &w, &coord);
        long long k = checked_index(i, coord, idx, per_element, size_dim, flag, call);
        w += coord * write_stride;
        dst[w] = k < 0 ? store<T>(0) : src[r + k * read_stride];
    }
}

// dst[write(coords with coords[dim] = index)] += src[read(coords)], atomically.
template <typename T>
DEV void index_accumulate_body(long long n, T* dst, const T* src, const long long* idx, const long long* meta,
                               int per_element, long long* flag, long long call) {
    int dim = (int)meta[1];
    long long size_dim = meta[2];
    int ndim = (int)meta[0];
    long long read_stride = meta[3 + ndim + 1 + dim];
    long long write_stride = meta[3 + ndim + 1 + ndim + 1 + dim];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r, w, coord = 0;
        index_offsets(i, meta, &r, &w, &coord);
        long long k = checked_index(i, coord, idx, per_element, size_dim, flag, call);
        if (k < 0) continue;
        atomic_accumulate(dst + w + k * write_stride, src[r + coord * read_stride]);
    }
}

// dst[i] = src at the index along dim (index_select, gather); 0 and the error flagged when out of range
#define INDEX_COPY_KERNEL(T, SUFFIX)                                                                    \
    extern "C" __global__ void index_copy_##SUFFIX(long long n, T* dst, const T* src,                   \
                                                   const long long* idx, const long long* meta,         \
                                                   int per_element, long long* flag, long long call) {  \
        index_copy_body<T>(n, dst, src, idx, meta, per_element, flag, call);                            \
    }

// dst at the index along dim += src[i], atomically (index_add, embedding backward, scatter_add)
#define INDEX_ACCUMULATE_KERNEL(T, SUFFIX)                                                              \
    extern "C" __global__ void index_accumulate_##SUFFIX(long long n, T* dst, const T* src,             \
                                                         const long long* idx, const long long* meta,   \
                                                         int per_element, long long* flag,              \
                                                         long long call) {                              \
        index_accumulate_body<T>(n, dst, src, idx, meta, per_element, flag, call);                      \
    }

INDEX_COPY_KERNEL(f16_t, f16)
INDEX_COPY_KERNEL(bf16_t, bf16)
INDEX_COPY_KERNEL(float, f32)
INDEX_COPY_KERNEL(double, f64)
INDEX_COPY_KERNEL(long long, i64)
INDEX_COPY_KERNEL(unsigned char, u8)
INDEX_COPY_KERNEL(bool, bool)

INDEX_ACCUMULATE_KERNEL(float, f32)
INDEX_ACCUMULATE_KERNEL(double, f64)
INDEX_ACCUMULATE_KERNEL(long long, i64)
