/* y = x @ w.T (+ bias) on a CPU: the matrix products of decode steps and prefills.

   Why: a decode step streams every weight once. torch's MKL reads them slowly for one row (it
   does not use a second core, and it is slow on AMD CPUs; benchmarks/RESULTS.md), and a batch of rows turns the step compute-bound. Here the weight is packed in panels of 32
   outputs ([n / 32, k, 32], engines/native/kernel.py packs it when the model is laid out): for
   each k, 32 weights are one contiguous 128-byte read, multiplied by x[r, k] broadcast for up to
   8 rows at once into 16 vector accumulators (a register-blocked GEMM micro-kernel): one row
   streams the weights as fast as llama.cpp does, a batch of rows reuses each weight read, and a
   prefill matches oneDNN's GEMM. Built by
   engines/native/build.py with the machine's C compiler (-O3 -march=native, or the target in
   $GREEDYSCORE_CPU_MARCH), used where engines/native/gate.py measures it faster than torch;
   OpenMP is the libgomp torch already loaded, so torch.set_num_threads applies and no second
   thread pool competes for the cores.

   Every output is summed in one fixed order whatever the number of rows or threads: sequential
   fused multiply-adds over blocks of 32 k, the blocks' sums added in order (error ~ a block plus
   k / 32 additions, not k). A row's result in a batch is therefore bit-identical to the same row
   alone. The build says -ffp-contract=off, so the compiler never fuses a multiply and an add on
   its own; the fused multiply-adds are the explicit fma16 and fmaf. */
#include "linear.h"

#define BLOCK 32     /* k per partial sum */
#define ROW_BLOCK 64 /* rows of x per sweep over the panels (64 x 1536 floats: 384 KB, in L2) */

/* R rows of x (stride k) against one panel (32 outputs from o) -> y[r, o..o+32) (+ bias), for a
   weight type W whose 16 lanes LOADW widens */
#define PANEL(SUFFIX, W, LOADW, R)                                                                                   \
    static void panel_##SUFFIX##_##R(const float* x, const W* wp, const float* bias, float* y, int64_t k,           \
                                     int64_t n, int64_t o) {                                                         \
        v16 t[R][2];                                                                                                 \
        for (int r = 0; r < R; r++) t[r][0] = t[r][1] = (v16){0};                                                    \
        for (int64_t i0 = 0; i0 < k; i0 += BLOCK) {                                                                  \
            int64_t end = i0 + BLOCK < k ? i0 + BLOCK : k;                                                           \
            v16 a[R][2];                                                                                             \
            for (int r = 0; r < R; r++) a[r][0] = a[r][1] = (v16){0};                                                \
            for (int64_t i = i0; i < end; i++) {                                                                     \
                v16 w0 = LOADW(wp + i * GS_PANEL), w1 = LOADW(wp + i * GS_PANEL + 16);                               \
                for (int r = 0; r < R; r++) {                                                                        \
                    v16 xb = splat(x[r * k + i]);                                                                    \
                    a[r][0] = fma16(xb, w0, a[r][0]);                                                                \
                    a[r][1] = fma16(xb, w1, a[r][1]);                                                                \
                }                                                                                                    \
            }                                                                                                        \
            for (int r = 0; r < R; r++) {                                                                            \
                t[r][0] += a[r][0];                                                                                  \
                t[r][1] += a[r][1];                                                                                  \
            }                                                                                                        \
        }                                                                                                            \
        int64_t m = n - o < GS_PANEL ? n - o : GS_PANEL;                                                             \
        for (int r = 0; r < R; r++)                                                                                  \
            for (int64_t j = 0; j < m; j++)                                                                          \
                y[r * n + o + j] = (j < 16 ? t[r][0][j] : t[r][1][j - 16]) + (bias ? bias[o + j] : 0.0f);            \
    }

#define KERNELS(SUFFIX, W, LOADW)                                                                                    \
    PANEL(SUFFIX, W, LOADW, 8)                                                                                       \
    PANEL(SUFFIX, W, LOADW, 4)                                                                                       \
    PANEL(SUFFIX, W, LOADW, 2)                                                                                       \
    PANEL(SUFFIX, W, LOADW, 1)                                                                                       \
    void gs_rows_##SUFFIX(const float* x, const W* wp, const float* bias, float* y, int64_t rows, int64_t k,         \
                          int64_t n) {                                                                               \
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) { /* a prefill: these rows stay in cache for every panel */ \
            int64_t end = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;                                             \
            _Pragma("omp for schedule(static) nowait")                                                               \
            for (int64_t p = 0; p < (n + GS_PANEL - 1) / GS_PANEL; p++) {                                            \
                const W* w = wp + p * k * GS_PANEL;                                                                  \
                int64_t r = r0, o = p * GS_PANEL;                                                                    \
                for (; r + 8 <= end; r += 8) panel_##SUFFIX##_8(x + r * k, w, bias, y + r * n, k, n, o);             \
                if (r + 4 <= end) {                                                                                  \
                    panel_##SUFFIX##_4(x + r * k, w, bias, y + r * n, k, n, o);                                      \
                    r += 4;                                                                                          \
                }                                                                                                    \
                if (r + 2 <= end) {                                                                                  \
                    panel_##SUFFIX##_2(x + r * k, w, bias, y + r * n, k, n, o);                                      \
                    r += 2;                                                                                          \
                }                                                                                                    \
                if (r < end) panel_##SUFFIX##_1(x + r * k, w, bias, y + r * n, k, n, o);                             \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    void gs_linear_##SUFFIX(const float* x, const W* wp, const float* bias, float* y, int64_t rows, int64_t k,       \
                            int64_t n) {                                                                             \
        _Pragma("omp parallel") gs_rows_##SUFFIX(x, wp, bias, y, rows, k, n);                                        \
    }

KERNELS(f32, float, load_f32)
KERNELS(bf16, uint16_t, load_bf16)

int gs_panel(void) { return GS_PANEL; }

/* two 16-lane chains over alternate chunks, a scalar tail, a fixed tree over the lanes */
float gs_dot_f32(const float* x, const float* w, int64_t k) {
    v16 a = {0}, b = {0};
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        a = fma16(load_f32(x + i), load_f32(w + i), a);
        b = fma16(load_f32(x + i + 16), load_f32(w + i + 16), b);
    }
    if (i + 16 <= k) {
        a = fma16(load_f32(x + i), load_f32(w + i), a);
        i += 16;
    }
    float tail = 0.0f;
    for (; i < k; i++) tail = fmaf(x[i], w[i], tail);
    v16 s = a + b;
    float h[8], q[4];
    for (int j = 0; j < 8; j++) h[j] = s[j] + s[j + 8];
    for (int j = 0; j < 4; j++) q[j] = h[j] + h[j + 4];
    return ((q[0] + q[2]) + (q[1] + q[3])) + tail;
}
