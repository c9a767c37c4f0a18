// Just enough CUDA to run the Deers .cu kernels as plain C++ on the CPU (tests only).
//
// A launch runs the blocks one after another; the threads of a block run as fibers on one OS
// thread (each started once with setcontext on its own stack, then switched with _setjmp /
// _longjmp, which skip the signal-mask system calls of swapcontext). __syncthreads() switches
// back to the scheduler, which runs the next fiber; when every thread of the block waits
// at the barrier, all of them continue. A thread that returns while others wait at a barrier is a
// divergent barrier (undefined on a GPU) and aborts the emulation. Warp shuffles exchange through
// a per-thread slot between two barriers, so they must be called by the whole block together (the
// Deers block reductions do). __shared__ variables are function statics: shared by the threads of
// the running block, as on a GPU, because blocks never overlap.
#pragma once

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

struct dim3 {
    unsigned int x, y, z;
};

namespace emu {

enum State { READY, WAITING, DONE };
const int MAX_THREADS = 1024;
const size_t STACK_BYTES = 128 * 1024;

inline dim3 thread_idx, block_idx, block_dim, grid_dim;
inline int current = 0;  // linear index of the running thread within its block
inline int threads = 0;
inline State states[MAX_THREADS];
inline ucontext_t contexts[MAX_THREADS];
inline ucontext_t context_template;
inline bool have_template = false;
inline bool started[MAX_THREADS];
inline jmp_buf scheduler_env;
inline jmp_buf fiber_envs[MAX_THREADS];
inline char* stacks = nullptr;
inline unsigned long long slots[MAX_THREADS];
inline void (*body)(void*) = nullptr;
inline void* body_args = nullptr;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda emulator: %s (block %u,%u,%u thread %d)\n", what, block_idx.x, block_idx.y,
                 block_idx.z, current);
    std::abort();
}

inline void barrier() {
    states[current] = WAITING;
    if (!_setjmp(fiber_envs[current])) _longjmp(scheduler_env, 1);
}

inline void entry() {
    body(body_args);
    states[current] = DONE;
    _longjmp(scheduler_env, 1);
}

inline void set_thread(int t) {
    current = t;
    thread_idx.x = t % block_dim.x;
    thread_idx.y = (t / block_dim.x) % block_dim.y;
    thread_idx.z = t / (block_dim.x * block_dim.y);
}

// Run thread t until its next barrier or its end.
inline void resume(int t) {
    set_thread(t);
    states[t] = READY;
    if (!_setjmp(scheduler_env)) {
        if (!started[t]) {
            started[t] = true;
            setcontext(&contexts[t]);
        }
        _longjmp(fiber_envs[t], 1);
    }
}

inline void run_block() {
    if (!have_template) {
        getcontext(&context_template);
        have_template = true;
    }
    for (int t = 0; t < threads; ++t) {
        contexts[t] = context_template;
        contexts[t].uc_stack.ss_sp = stacks + (size_t)t * STACK_BYTES;
        contexts[t].uc_stack.ss_size = STACK_BYTES;
        contexts[t].uc_link = nullptr;
        makecontext(&contexts[t], entry, 0);
        states[t] = READY;
        started[t] = false;
    }
    for (;;) {
        for (int t = 0; t < threads; ++t) {
            if (states[t] != DONE) resume(t);
        }
        int done = 0;
        for (int t = 0; t < threads; ++t) done += states[t] == DONE;
        if (done == threads) return;
        if (done > 0) fail("__syncthreads() reached by only some threads of a block");
    }
}

// cfg: grid x, y, z, block x, y, z
inline void launch(const long long* cfg, void (*fn)(void*), void* args) {
    grid_dim = {(unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]};
    block_dim = {(unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]};
    threads = (int)(cfg[3] * cfg[4] * cfg[5]);
    if (threads < 1 || threads > MAX_THREADS) fail("block size out of range");
    if (stacks == nullptr) {
        void* p = mmap(nullptr, STACK_BYTES * MAX_THREADS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fail("cannot map fiber stacks");
        stacks = (char*)p;
    }
    body = fn;
    body_args = args;
    for (unsigned z = 0; z < grid_dim.z; ++z)
        for (unsigned y = 0; y < grid_dim.y; ++y)
            for (unsigned x = 0; x < grid_dim.x; ++x) {
                block_idx = {x, y, z};
                run_block();
            }
}

}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

inline void __syncthreads() { emu::barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned int, T value, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a wide type");
    int partner = emu::current ^ lane_mask;
    if (partner >= emu::threads) emu::fail("shuffle partner outside the block");
    std::memcpy(&emu::slots[emu::current], &value, sizeof(T));
    emu::barrier();
    T result;
    std::memcpy(&result, &emu::slots[partner], sizeof(T));
    emu::barrier();
    return result;
}

inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }

inline float atomicAdd(float* p, float v) { float old = *p; *p = old + v; return old; }
inline double atomicAdd(double* p, double v) { double old = *p; *p = old + v; return old; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    unsigned long long old = *p;
    *p = old + v;
    return old;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long compare, unsigned long long value) {
    unsigned long long old = *p;
    if (old == compare) *p = value;
    return old;
}
