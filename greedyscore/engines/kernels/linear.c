/* y = x @ w.T (+ bias) for a few rows: the decode step's matrix-vector products on a CPU.

   Why: a decode step streams every weight once; torch's MKL reads them at ~10-18 GB/s on the
   machines we measured (it does not use a second core for one row, and it is slow on AMD CPUs),
   while a plain dot-product kernel over the rows of w, split across the cores by OpenMP, reads
   ~25-28 GB/s, as llama.cpp does. Built by engines/native.py with the machine's C compiler
   (-O3 -march=native); OpenMP is the libgomp torch already loaded, so torch.set_num_threads
   applies and no second thread pool competes for the cores.

   Every dot product is summed in one fixed order, whatever the number of rows or threads: two
   16-lane chains over alternate 16-float chunks, a scalar tail, then a fixed tree over the
   lanes. A row's result in a batch is therefore bit-identical to the same row alone. */
#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef uint16_t h16u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint32_t u16 __attribute__((vector_size(64)));

static inline float finish(v16 a, v16 b, float tail) {
    v16 s = a + b;
    v8 h = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
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

static float dot_f32(const float* x, const float* w, int64_t k) {
    v16 a = {0}, b = {0};
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        a += load_f32(x + i) * load_f32(w + i);
        b += load_f32(x + i + 16) * load_f32(w + i + 16);
    }
    if (i + 16 <= k) {
        a += load_f32(x + i) * load_f32(w + i);
        i += 16;
    }
    float t = 0.0f;
    for (; i < k; i++) t += x[i] * w[i];
    return finish(a, b, t);
}

static float dot_bf16(const float* x, const uint16_t* w, int64_t k) {
    v16 a = {0}, b = {0};
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        a += load_f32(x + i) * load_bf16(w + i);
        b += load_f32(x + i + 16) * load_bf16(w + i + 16);
    }
    if (i + 16 <= k) {
        a += load_f32(x + i) * load_bf16(w + i);
        i += 16;
    }
    float t = 0.0f;
    for (; i < k; i++) t += x[i] * bf16_to_f32(w[i]);
    return finish(a, b, t);
}

/* x [rows, k] float32, w [n, k] (float32 or bfloat16 bits), bias [n] float32 or NULL, y [rows, n] float32.
   Each output's weight row is read from memory once; the other rows find it in the L1 cache. */
void gs_linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t rows, int64_t k,
                   int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        const float* wo = w + o * k;
        float b = bias ? bias[o] : 0.0f;
        for (int64_t r = 0; r < rows; r++) y[r * n + o] = dot_f32(x + r * k, wo, k) + b;
    }
}

void gs_linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t rows, int64_t k,
                    int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        const uint16_t* wo = w + o * k;
        float b = bias ? bias[o] : 0.0f;
        for (int64_t r = 0; r < rows; r++) y[r * n + o] = dot_bf16(x + r * k, wo, k) + b;
    }
}
