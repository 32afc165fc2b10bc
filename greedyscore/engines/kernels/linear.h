/* What kernels/linear.c and kernels/llama_step.c share: 16-lane float vectors, the one fused
   multiply-add, and the matrix products over weights packed in panels (engines/native.py packs). */
#ifndef GS_LINEAR_H
#define GS_LINEAR_H
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef uint16_t h16u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint32_t u16 __attribute__((vector_size(64)));

#if defined(__AVX512F__)
#include <immintrin.h>
static inline v16 fma16(v16 x, v16 w, v16 acc) { return (v16)_mm512_fmadd_ps((__m512)x, (__m512)w, (__m512)acc); }
#else /* a multiply and an add, the same everywhere */
static inline v16 fma16(v16 x, v16 w, v16 acc) { return acc + x * w; }
#endif

static inline v16 splat(float f) { return (v16){f, f, f, f, f, f, f, f, f, f, f, f, f, f, f, f}; }

static inline v16 load_f32(const float* p) { return *(const v16u*)p; }

/* 16 bfloat16 values widened to float32: the bf16 bits are the float's high half */
static inline v16 load_bf16(const uint16_t* p) {
    u16 bits = __builtin_convertvector(*(const h16u*)p, u16) << 16;
    return (v16)bits;
}

/* A barrier among the threads of one parallel region that spins (a pause per try; a yield after
   many, where threads outnumber free cores). Why not OpenMP's: libgomp sleeps on a futex after
   only 100 spins once more OpenMP threads exist than CPUs, which is the case as soon as a second
   thread of the process (a server's worker beside the main thread) has run a parallel region;
   a decode step then paid a sleep and a wake-up (~25 us) at each of its ~400 barriers, a third
   of the step. Each thread keeps its own `sense`, 0 at the start of the region. */
typedef struct {
    int count, sense;
} gs_barrier;

static inline void gs_barrier_wait(gs_barrier* b, int threads, int* sense) {
    int s = !*sense;
    *sense = s;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == threads) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->sense, s, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&b->sense, __ATOMIC_ACQUIRE) != s; spins++) {
        if (spins > 200000) sched_yield();
#if defined(__x86_64__)
        else __builtin_ia32_pause();
#endif
    }
}

#define GS_PANEL 32 /* outputs per panel: a weight [n, k] is packed as [ceil(n / 32), k, 32] */

/* y[rows, n] = x[rows, k] @ w.T (+ bias) with w packed in panels: an orphaned `omp for nowait`
   over the panels (the threads of an enclosing parallel region share them, and must meet at a
   barrier before reading y; one thread outside of one) */
void gs_rows_f32(const float* x, const float* wp, const float* bias, float* y, int64_t rows, int64_t k, int64_t n);
void gs_rows_bf16(const float* x, const uint16_t* wp, const float* bias, float* y, int64_t rows, int64_t k, int64_t n);
/* one dot product of two float32 vectors (the llama step's norms and attention) */
float gs_dot_f32(const float* x, const float* w, int64_t k);

#endif
