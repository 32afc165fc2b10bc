/* What kernels/linear.c and kernels/llama_step.c share: 16-lane float vectors, the one fused
   multiply-add and the fixed summation order of a dot product, and the matrix-row products. */
#ifndef GS_LINEAR_H
#define GS_LINEAR_H
#include <math.h>
#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef uint16_t h16u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint32_t u16 __attribute__((vector_size(64)));

#if defined(__AVX512F__)
#include <immintrin.h>
static inline v16 fma16(v16 x, v16 w, v16 acc) { return (v16)_mm512_fmadd_ps((__m512)x, (__m512)w, (__m512)acc); }
#else /* a multiply and an add, the same everywhere */
static inline v16 fma16(v16 x, v16 w, v16 acc) { return acc + x * w; }float gs_dot_f32(const float* x, const float* w, int64_t k);

#endif

static inline float finish(v16 a, v16 b, float tail) {
    v16 s = a + b;
    float h[8], q[4];
    for (int j = 0; j < 8; j++) h[j] = s[j] + s[j + 8];
    for (int j = 0; j < 4; j++) q[j] = h[j] + h[j + 4];
    return ((q[0] + q[2]) + (q[1] + q[3])) + tail;
}

static inline v16 load_f32(const float* p) { return *(const v16u*)p; }

/* 16 bfloat16 values widened to float32: the bf16 bits are the float's high half */
static inline v16 load_bf16(const uint16_t* p) {
    u16 bits = __builtin_convertvector(*(const h16u*)p, u16) << 16;
    return (v16)bits;
}

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* y[rows, n] = x[rows, k] @ w[n, k].T (+ bias): an orphaned `omp for` over the outputs (see linear.c) */
void gs_rows_f32(const float* x, const float* w, const float* bias, float* y, int64_t rows, int64_t k, int64_t n);
void gs_rows_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t rows, int64_t k, int64_t n);
float gs_dot_f32(const float* x, const float* w, int64_t k);

#endif
