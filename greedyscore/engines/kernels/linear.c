/* y = x @ w.T (+ bias) for a few rows: the decode step's matrix-vector products on a CPU.

   Why: a decode step streams every weight once; torch's MKL reads them at ~10-18 GB/s on the
   machines we measured (it does not use a second core for one row, and it is slow on AMD CPUs),
   while a plain dot-product kernel over the rows of w, split across the cores by OpenMP, reads
   ~25-28 GB/s, as llama.cpp does. Built by engines/native.py with the machine's C compiler
   (-O3 -march=native); OpenMP is the libgomp torch already loaded, so torch.set_num_threads
   applies and no second thread pool competes for the cores.

   Every dot product is summed in one fixed order, whatever the number of rows or threads: two
   16-lane chains over alternate 16-float chunks, a scalar tail, then a fixed tree over the
   lanes. A row's result in a batch is therefore bit-identical to the same row alone. The build
   says -ffp-contract=off, so the compiler never fuses a multiply and an add on its own (it would
   in some tiles and not in others); the fused multiply-adds are the explicit fma16 and fmaf. */
#include "linear.h"

/* The dot products of 1, 2 or 4 rows of x with one weight row, for a weight type W read by LOADW
   (16 lanes) and SCALARW (one). A weight chunk is loaded once for all the rows; each row's dot is
   summed exactly as the one-row version sums it. */
#define ROW_DOTS(SUFFIX, W, LOADW, SCALARW)                                                                          \
    static float dot1_##SUFFIX(const float* x, const W* w, int64_t k) {                                              \
        v16 a = {0}, b = {0};                                                                                        \
        int64_t i = 0;                                                                                               \
        for (; i + 32 <= k; i += 32) {                                                                               \
            a = fma16(load_f32(x + i), LOADW(w + i), a);                                                             \
            b = fma16(load_f32(x + i + 16), LOADW(w + i + 16), b);                                                   \
        }                                                                                                            \
        if (i + 16 <= k) {                                                                                           \
            a = fma16(load_f32(x + i), LOADW(w + i), a);                                                             \
            i += 16;                                                                                                 \
        }                                                                                                            \
        float t = 0.0f;                                                                                              \
        for (; i < k; i++) t = fmaf(x[i], SCALARW(w[i]), t);                                                         \
        return finish(a, b, t);                                                                                      \
    }                                                                                                                \
    static void dot2_##SUFFIX(const float* x, const W* w, int64_t k, float* out) {                                   \
        const float *x0 = x, *x1 = x + k;                                                                            \
        v16 a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0};                                                                  \
        int64_t i = 0;                                                                                               \
        for (; i + 32 <= k; i += 32) {                                                                               \
            v16 w0 = LOADW(w + i), w1 = LOADW(w + i + 16);                                                           \
            a0 = fma16(load_f32(x0 + i), w0, a0); b0 = fma16(load_f32(x0 + i + 16), w1, b0);                         \
            a1 = fma16(load_f32(x1 + i), w0, a1); b1 = fma16(load_f32(x1 + i + 16), w1, b1);                         \
        }                                                                                                            \
        if (i + 16 <= k) {                                                                                           \
            v16 w0 = LOADW(w + i);                                                                                   \
            a0 = fma16(load_f32(x0 + i), w0, a0); a1 = fma16(load_f32(x1 + i), w0, a1);                              \
            i += 16;                                                                                                 \
        }                                                                                                            \
        float t0 = 0.0f, t1 = 0.0f;                                                                                  \
        for (; i < k; i++) { float wi = SCALARW(w[i]); t0 = fmaf(x0[i], wi, t0); t1 = fmaf(x1[i], wi, t1); }         \
        out[0] = finish(a0, b0, t0); out[1] = finish(a1, b1, t1);                                                    \
    }                                                                                                                \
    static void dot4_##SUFFIX(const float* x, const W* w, int64_t k, float* out) {                                   \
        const float *x0 = x, *x1 = x + k, *x2 = x + 2 * k, *x3 = x + 3 * k;                                          \
        v16 a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0}, a3 = {0}, b3 = {0};                          \
        int64_t i = 0;                                                                                               \
        for (; i + 32 <= k; i += 32) {                                                                               \
            v16 w0 = LOADW(w + i), w1 = LOADW(w + i + 16);                                                           \
            a0 = fma16(load_f32(x0 + i), w0, a0); b0 = fma16(load_f32(x0 + i + 16), w1, b0);                         \
            a1 = fma16(load_f32(x1 + i), w0, a1); b1 = fma16(load_f32(x1 + i + 16), w1, b1);                         \
            a2 = fma16(load_f32(x2 + i), w0, a2); b2 = fma16(load_f32(x2 + i + 16), w1, b2);                         \
            a3 = fma16(load_f32(x3 + i), w0, a3); b3 = fma16(load_f32(x3 + i + 16), w1, b3);                         \
        }                                                                                                            \
        if (i + 16 <= k) {                                                                                           \
            v16 w0 = LOADW(w + i);                                                                                   \
            a0 = fma16(load_f32(x0 + i), w0, a0); a1 = fma16(load_f32(x1 + i), w0, a1);                              \
            a2 = fma16(load_f32(x2 + i), w0, a2); a3 = fma16(load_f32(x3 + i), w0, a3);                              \
            i += 16;                                                                                                 \
        }                                                                                                            \
        float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;                                                            \
        for (; i < k; i++) {                                                                                         \
            float wi = SCALARW(w[i]);                                                                                \
            t0 = fmaf(x0[i], wi, t0); t1 = fmaf(x1[i], wi, t1); t2 = fmaf(x2[i], wi, t2); t3 = fmaf(x3[i], wi, t3);  \
        }                                                                                                            \
        out[0] = finish(a0, b0, t0); out[1] = finish(a1, b1, t1);                                                    \
        out[2] = finish(a2, b2, t2); out[3] = finish(a3, b3, t3);                                                    \
    }                                                                                                                \
    /* x [rows, k] float32, w [n, k], bias [n] float32 or NULL, y [rows, n] float32. Each weight row                 \
       is read from memory once, by one thread, for all the rows. An orphaned `omp for`: the threads                 \
       of the enclosing parallel region share the output rows (one thread outside of one). */                       \
    void gs_rows_##SUFFIX(const float* x, const W* w, const float* bias, float* y, int64_t rows, int64_t k,          \
                          int64_t n) {                                                                               \
        _Pragma("omp for schedule(static)")                                                                          \
        for (int64_t o = 0; o < n; o++) {                                                                            \
            const W* wo = w + o * k;                                                                                 \
            float b = bias ? bias[o] : 0.0f, out[4];                                                                 \
            int64_t r = 0;                                                                                           \
            for (; r + 4 <= rows; r += 4) {                                                                          \
                dot4_##SUFFIX(x + r * k, wo, k, out);                                                                \
                for (int j = 0; j < 4; j++) y[(r + j) * n + o] = out[j] + b;                                         \
            }                                                                                                        \
            if (r + 2 <= rows) {                                                                                     \
                dot2_##SUFFIX(x + r * k, wo, k, out);                                                                \
                y[r * n + o] = out[0] + b;                                                                           \
                y[(r + 1) * n + o] = out[1] + b;                                                                     \
                r += 2;                                                                                              \
            }                                                                                                        \
            if (r < rows) y[r * n + o] = dot1_##SUFFIX(x + r * k, wo, k) + b;                                        \
        }                                                                                                            \
    }                                                                                                                \
    void gs_linear_##SUFFIX(const float* x, const W* w, const float* bias, float* y, int64_t rows, int64_t k,        \
                            int64_t n) {                                                                             \
        _Pragma("omp parallel") gs_rows_##SUFFIX(x, w, bias, y, rows, k, n);                                         \
    }

static inline float f32_scalar(float w) { return w; }

ROW_DOTS(f32, float, load_f32, f32_scalar)
ROW_DOTS(bf16, uint16_t, load_bf16, bf16_to_f32)

/* one dot product, summed as every row above (the llama step's norms and attention use it) */
float gs_dot_f32(const float* x, const float* w, int64_t k) { return dot1_f32(x, w, k); }
