/* What kernels/linear.c and kernels/llama_step.c share: 16-lane float vectors, the one fused
   multiply-add, and the matrix products over weights packed in panels (engines/native/kernel.py
   packs them). */
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

/* A barrier among the threads of one parallel region that spins (a pause per try; a yield per
   try after 2,000, where threads outnumber free cores). Why not OpenMP's: libgomp sleeps on a
   futex after only 100 spins once more OpenMP threads exist than CPUs, which is the case as soon
   as a second thread of the process (a server's worker beside the main thread) has run a
   parallel region; a decode step then paid a sleep and a wake-up at each of its hundreds of
   barriers. Each thread keeps its own `sense`, 0 at the start of the region. */
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
        if (spins > 2000) sched_yield(); /* a teammate this late has lost its core */
#if defined(__x86_64__)
        else __builtin_ia32_pause();
#endif
    }
}

/* max of two vectors, lane by lane */
static inline v16 max16(v16 a, v16 b) {
#if defined(__AVX512F__)
    return (v16)_mm512_max_ps((__m512)a, (__m512)b);
#else
    u16 m = (u16)(a > b);
    return (v16)((m & (u16)a) | (~m & (u16)b));
#endif
}

/* e^x for x <= 0 (a softmax's shifted scores; -inf included), to ~1 ulp: x = n ln2 + r, e^r by
   Cephes' expf polynomial, times 2^n; 0 below ~-87 (where float32's e^x underflows) */
#if defined(__AVX512F__)
static inline v16 exp16(v16 x) {
    x = max16(x, splat(-120.0f)); /* e^-120 is 0 in float32; keeps -inf out of the arithmetic */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps((__m512)x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v16 nv = (v16)n, r = fma16(nv, splat(-0.693359375f), x);
    r = fma16(nv, splat(2.12194440e-4f), r);
    v16 p = fma16(splat(1.9875691500e-4f), r, splat(1.3981999507e-3f));
    p = fma16(p, r, splat(8.3334519073e-3f));
    p = fma16(p, r, splat(4.1665795894e-2f));
    p = fma16(p, r, splat(1.6666665459e-1f));
    p = fma16(p, r, splat(5.0000001201e-1f));
    p = fma16(p, r * r, r + splat(1.0f));
    return (v16)_mm512_scalef_ps((__m512)p, n); /* p 2^n, 0 where 2^n underflows */
}
#else
static inline v16 exp16(v16 x) {
    v16 out;
    for (int c = 0; c < 16; c++) out[c] = expf(x[c]);
    return out;
}
#endif

/* x kept in a register: without this GCC folds the load into each of the rows' multiply-adds,
   a read of every value vector from L1 where one will do (the loop then waits on loads) */
static inline v16 in_register(v16 x) {
#if defined(__AVX512F__)
    __asm__("" : "+v"(x));
#endif
    return x;
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
