/* Causal self-attention of a prompt's prefill on a CPU: out = softmax(q k^T * scale, causal) v.

   Why: torch's flash attention for the CPU runs well below the matrix kernel's speed, and over a
   long prompt attention is a large part of the prefill (its cost grows with the square of the
   prompt; benchmarks/RESULTS.md). Here it is two register-blocked products like kernels/linear.c's:
   each kv head's keys packed once in panels of 32 positions ([n / 32, d, 32], so S = q k^T for 8
   query rows is the weight kernel's micro-kernel), a plain softmax of each row (the scores of 8
   rows against every earlier key fit in L2), and p v with 4 rows x 64 lanes of accumulators.
   Only keys at or before a query's position are read (causal: half the products of a full
   attention); grouped-query heads read their kv head's keys.

   dims: n (positions), heads, kv_heads, d (head size, a multiple of 16), then the strides (in
   floats) between positions and between heads of q, k and v; out is [n, heads, d] contiguous. */
#include <stdlib.h>

#include "linear.h"

enum { N, HEADS, KV_HEADS, D, Q_ROW, Q_HEAD, K_ROW, K_HEAD, V_ROW, V_HEAD, DIMS };

#define QB 8 /* query rows per work item */
#define KB GS_PANEL /* keys per panel */

/* s[r, 0..32) = x[r] . panel's 32 keys, for 8 rows of x (stride d) */
static void scores8(const float* x, const float* panel, float* s, int64_t d, int64_t s_stride) {
    v16 a[QB][2];
    for (int r = 0; r < QB; r++) a[r][0] = a[r][1] = (v16){0};
    for (int64_t i = 0; i < d; i++) {
        v16 w0 = load_f32(panel + i * KB), w1 = load_f32(panel + i * KB + 16);
        for (int r = 0; r < QB; r++) {
            v16 xb = splat(x[r * d + i]);
            a[r][0] = fma16(xb, w0, a[r][0]);
            a[r][1] = fma16(xb, w1, a[r][1]);
        }
    }
    for (int r = 0; r < QB; r++) {
        *(v16u*)(s + r * s_stride) = a[r][0];
        *(v16u*)(s + r * s_stride + 16) = a[r][1];
    }
}

/* out[r, 0..16 CV) = sum over keys j < len of p[r, j] v[j, 0..16 CV), for 4 rows (a row's p is 0
   past its own position), each row then scaled by inv[r] */
#define WEIGHTED(CV)                                                                                          \
    static void weighted4_##CV(const float* p, int64_t p_stride, const float* v, int64_t v_row, int64_t len, \
                               const float* inv, float* out, int64_t out_stride) {                           \
        v16 a[4][CV];                                                                                         \
        for (int r = 0; r < 4; r++)                                                                           \
            for (int c = 0; c < CV; c++) a[r][c] = (v16){0};                                                  \
        for (int64_t j = 0; j < len; j++) {                                                                   \
            v16 vv[CV];                                                                                       \
            for (int c = 0; c < CV; c++) vv[c] = in_register(load_f32(v + j * v_row + 16 * c));               \
            for (int r = 0; r < 4; r++) {                                                                     \
                v16 pb = splat(p[r * p_stride + j]);                                                          \
                for (int c = 0; c < CV; c++) a[r][c] = fma16(pb, vv[c], a[r][c]);                             \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < 4; r++)                                                                           \
            for (int c = 0; c < CV; c++) *(v16u*)(out + r * out_stride + 16 * c) = a[r][c] * splat(inv[r]);  \
    }
WEIGHTED(4)
WEIGHTED(1)

/* one row's scores s[0..len) -> e^((s - max) * scale), zero from len to `width`; -> 1 / their sum */
static float softmax_row(float* s, int64_t len, int64_t width, float scale) {
    v16 m = splat(-INFINITY);
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) m = max16(m, load_f32(s + j));
    float mx = -INFINITY;
    for (int c = 0; c < 16; c++) mx = m[c] > mx ? m[c] : mx;
    for (int64_t t = j; t < len; t++) mx = s[t] > mx ? s[t] : mx;
    v16 sum = {0}, shift = splat(-mx * scale), sc = splat(scale);
    for (j = 0; j + 16 <= len; j += 16) {
        v16 e = exp16(fma16(load_f32(s + j), sc, shift)); /* s scale - max scale <= 0 */
        *(v16u*)(s + j) = e;
        sum += e;
    }
    float total = 0.0f;
    for (int c = 0; c < 16; c++) total += sum[c];
    if (j < len) { /* the row's last partial vector: lanes past its position are zeroed */
        v16 e = exp16(fma16(load_f32(s + j), sc, shift));
        for (int64_t t = j; t < len; t++) total += e[t - j];
        for (int64_t t = j; t < j + 16; t++) s[t] = t < len ? e[t - j] : 0.0f;
        j += 16;
    }
    for (; j < width; j++) s[j] = 0.0f;
    return 1.0f / total;
}

/* keys of kv head g packed: panel b holds positions 32b..32b+31, [d][32], zero past n */
static void pack_keys(const float* k, const int64_t* dims, float* kp, int64_t g, int64_t b) {
    int64_t n = dims[N], d = dims[D];
    float* panel = kp + (g * ((n + KB - 1) / KB) + b) * d * KB;
    for (int64_t j = 0; j < KB; j++) {
        int64_t t = b * KB + j;
        const float* src = k + t * dims[K_ROW] + g * dims[K_HEAD];
        for (int64_t i = 0; i < d; i++) panel[i * KB + j] = t < n ? src[i] : 0.0f;
    }
}

/* query rows r0..r0+8 of head h (rows past n are padding) -> out */
static void attend(const float* q, const float* v, const int64_t* dims, const float* kp, float scale, float* out,
                   int64_t h, int64_t r0, float* x, float* s) {
    int64_t n = dims[N], d = dims[D], heads = dims[HEADS], nb = (n + KB - 1) / KB;
    int64_t g = h / (heads / dims[KV_HEADS]);
    int64_t rows = n - r0 < QB ? n - r0 : QB;
    for (int64_t r = 0; r < QB; r++)
        for (int64_t i = 0; i < d; i++) x[r * d + i] = r < rows ? q[(r0 + r) * dims[Q_ROW] + h * dims[Q_HEAD] + i] : 0.0f;
    int64_t width = ((r0 + rows - 1) / KB + 1) * KB; /* keys through the last row's panel */
    for (int64_t b = 0; b < width / KB; b++) scores8(x, kp + (g * nb + b) * d * KB, s + b * KB, d, width);
    float inv[QB];
    for (int64_t r = 0; r < QB; r++) inv[r] = r < rows ? softmax_row(s + r * width, r0 + r + 1, width, scale) : 0.0f;
    const float* vg = v + g * dims[V_HEAD];
    for (int64_t r = 0; r < rows; r += 4) {
        int64_t len = r0 + (r + 4 < rows ? r + 4 : rows); /* keys up to the 4 rows' last position */
        float tmp[4 * 64];
        for (int64_t c = 0; c < d; c += 64) {
            int64_t cv = d - c < 64 ? (d - c) / 16 : 4;
            if (cv == 4) {
                weighted4_4(s + r * width, width, vg + c, dims[V_ROW], len, inv + r, tmp, 64);
            } else {
                for (int64_t c1 = 0; c1 < cv; c1++)
                    weighted4_1(s + r * width, width, vg + c + 16 * c1, dims[V_ROW], len, inv + r, tmp + 16 * c1, 64);
            }
            for (int64_t rr = r; rr < r + 4 && rr < rows; rr++)
                for (int64_t i = 0; i < cv * 16; i++) out[((r0 + rr) * heads + h) * d + c + i] = tmp[(rr - r) * 64 + i];
        }
    }
}

int64_t gs_causal_attention(const float* q, const float* k, const float* v, float* out, const int64_t* dims,
                            float scale) {
    int64_t n = dims[N], d = dims[D], heads = dims[HEADS], kv = dims[KV_HEADS];
    if (n < 1 || d < 16 || d % 16 || kv < 1 || heads % kv) return -1;
    int64_t nb = (n + KB - 1) / KB, nq = (n + QB - 1) / QB;
    float* kp = malloc(sizeof(float) * kv * nb * d * KB);
    if (!kp) return -2;
    int failed = 0;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < kv * nb; t++) pack_keys(k, dims, kp, t / nb, t % nb);
        float* x = malloc(sizeof(float) * QB * d);
        float* s = malloc(sizeof(float) * QB * nb * KB);
        if (!x || !s) {
#pragma omp atomic write
            failed = 1;
        }
        /* kv head by kv head (its packed keys stay in this core's L2 from item to item), and within
           one the longest rows first (an item costs its last row's position): the threads end together */
        int64_t group = heads / kv, per_kv = nq * group;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < heads * nq; t++)
            if (x && s) {
                int64_t g = t / per_kv, i = t % per_kv;
                attend(q, v, dims, kp, scale, out, g * group + i % group, (nq - 1 - i / group) * QB, x, s);
            }
        free(x);
        free(s);
    }
    free(kp);
    return failed ? -2 : 0;
}
