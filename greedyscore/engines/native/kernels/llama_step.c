/* One decode step of a Llama model in a single call: every layer of a few rows, float32.

   Why: with the matrix products in linear.c, a small model's decode step still spent much of its
   time outside them: ~30 torch calls per layer from Python (norms, rotary, attention,
   activation, residual adds), with the other cores idle in between. Here the whole step is one OpenMP parallel region: the products share the weight
   panels among the threads (gs_rows: the same sums, so the same bits, as linear.c alone), the
   small vector work runs on one thread between them, attention splits over (row, head).

   The computation is modeling_llama's (transformers 5.24) in float32 (the matrix weights float32
   or bfloat16, widened as they are read; the norms' weights float32): RMSNorm, rotary embedding
   (cos/sin from the caller, as LlamaRotaryEmbedding makes them), grouped-query attention over
   the cache with padding masked out, SiLU-gated MLP, residual adds, final norm and output layer.
   engines/llama_step.py calls it and tests/test_llama_step.py holds it to transformers' forward. */
#include <omp.h>

#include "linear.h"

/* dims: rows, layers, hidden, heads, kv_heads, head_dim, inter, vocab, col, row_stride, head_stride
   (the last two of every layer's keys and values, in floats; a position is head_dim floats), and
   bf16: 1 where the matrix weights (not the norms') are bfloat16 */
enum { ROWS, LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB, COL, ROW_STRIDE, HEAD_STRIDE, BF16, NDIMS };
/* weights per layer, in this order, then the final norm and the output layer */
enum { LN1, WQ, WK, WV, WO, LN2, GATE, UP, DOWN, PER_LAYER };

static void rms_norm(const float* h, const float* w, float eps, float* out, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        const float* x = h + r * n;
        float* y = out + r * n;
        float inv = 1.0f / sqrtf(gs_dot_f32(x, x, n) / (float)n + eps);
        for (int64_t i = 0; i < n; i++) y[i] = w[i] * (x[i] * inv);
    }
}

/* v * cos + rotate_half(v) * sin, rotate_half(v) = cat(-v[half:], v[:half]), in place pair by pair */
static void rotate(float* v, const float* c, const float* s, int64_t d) {
    int64_t half = d / 2;
    for (int64_t j = 0; j < half; j++) {
        float lo = v[j], hi = v[j + half];
        v[j] = lo * c[j] + (-hi) * s[j];
        v[j + half] = hi * c[j + half] + lo * s[j + half];
    }
}

/* out[0..16 CV) = sum over the row's keys t of p[t] v[t, 0..16 CV) (padding skipped), times inv */
#define WEIGHTED(CV)                                                                                          \
    static void weighted_##CV(const float* p, const float* values, const uint8_t* mask, int64_t start,      \
                              int64_t n, int64_t d, float inv, float* out) {                                 \
        v16 a[CV];                                                                                            \
        for (int c = 0; c < CV; c++) a[c] = (v16){0};                                                         \
        for (int64_t t = start; t < n; t++) {                                                                 \
            if (mask && !mask[t]) continue;                                                                   \
            v16 w = splat(p[t]);                                                                              \
            for (int c = 0; c < CV; c++) a[c] = fma16(w, load_f32(values + t * d + 16 * c), a[c]);            \
        }                                                                                                     \
        for (int c = 0; c < CV; c++) *(v16u*)(out + 16 * c) = a[c] * splat(inv);                              \
    }
WEIGHTED(4)
WEIGHTED(1)

/* one query head of one row over its key/value head's cache: softmax(q.K * scale) @ V. A row's
   keys start at its first unmasked position (padding is on the left): the vector sums run from
   there, so a row's numbers do not depend on how much padding its batch gave it. */
static void attend(const float* q, const float* keys, const float* values, const uint8_t* mask, int64_t n,
                   int64_t d, float scale, float* p, float* out) {
    int64_t start = 0;
    while (mask && start < n && !mask[start]) start++;
    if (start == n) { /* no real key (not a row decode.py makes): attend to nothing */
        for (int64_t j = 0; j < d; j++) out[j] = 0.0f;
        return;
    }
    float top = -INFINITY;
    for (int64_t t = start; t < n; t++) {
        p[t] = (mask && !mask[t]) ? -INFINITY : gs_dot_f32(q, keys + t * d, d) * scale;
        top = p[t] > top ? p[t] : top;
    }
    v16 acc = {0}, shift = splat(top);
    int64_t t = start;
    for (; t + 16 <= n; t += 16) {
        v16 e = exp16(load_f32(p + t) - shift);
        *(v16u*)(p + t) = e;
        acc += e;
    }
    float sum = 0.0f;
    for (int c = 0; c < 16; c++) sum += acc[c];
    for (; t < n; t++) {
        p[t] = expf(p[t] - top);
        sum += p[t];
    }
    float inv = 1.0f / sum;
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) weighted_4(p, values + c, mask, start, n, d, inv, out + c);
    for (; c + 16 <= d; c += 16) weighted_1(p, values + c, mask, start, n, d, inv, out + c);
    for (; c < d; c++) { /* a head size that is not a multiple of 16 */
        float a = 0.0f;
        for (int64_t t = start; t < n; t++)
            if (!mask || mask[t]) a = fmaf(p[t], values[t * d + c], a);
        out[c] = a * inv;
    }
}

/* y = x @ w.T for float32 (bf16 == 0) or bfloat16 weights: an orphaned `omp for` */
static void mm(int bf16, const float* x, const void* w, float* y, int64_t rows, int64_t k, int64_t n) {
    if (bf16) gs_rows_bf16(x, (const uint16_t*)w, NULL, y, rows, k, n);
    else gs_rows_f32(x, (const float*)w, NULL, y, rows, k, n);
}

static void add(float* h, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] += y[i];
}

/* w: per layer LN1..DOWN (the norms' weights float32, the matrices packed by native/kernel.py),
   then the final norm and the output layer; eps: per layer the two norms' epsilons, the final
   norm's, then the attention scale; h [rows, hidden]: the tokens' embeddings (overwritten: the
   residual stream); cos, sin [rows, head_dim]; mask [rows, col + 1] (1 = a real token) or NULL;
   keys/values: per layer, this step's are written at position `col`; scratch: gs_llama_scratch
   floats; logits [rows, vocab]. */
void gs_llama_step(const int64_t* dims, const void* const* w, const float* eps, float* h, const float* cos,
                   const float* sin, const uint8_t* mask, float* const* keys, float* const* values, float* scratch,
                   float* logits) {
    const int64_t rows = dims[ROWS], H = dims[HIDDEN], heads = dims[HEADS], kvh = dims[KV_HEADS], d = dims[HEAD_DIM];
    const int64_t I = dims[INTER], col = dims[COL], n = col + 1, rs = dims[ROW_STRIDE], hs = dims[HEAD_STRIDE];
    const int64_t group = heads / kvh, qw = heads * d, kw = kvh * d;
    const int bf = dims[BF16] != 0;
    const float scale = eps[2 * dims[LAYERS] + 1];
    float *x = scratch, *q = x + rows * H, *k = q + rows * qw, *v = k + rows * kw, *att = v + rows * kw;
    float *tmp = att + rows * qw, *g = tmp + rows * H, *u = g + rows * I, *p = u + rows * I;
    gs_barrier bar = {0, 0};
#pragma omp parallel
    {
        /* one thread does the small vector work between the products, all meet at a barrier before
           what reads it: ~9 barriers a layer, spinning (gs_barrier_wait, linear.h) */
        const int threads = omp_get_num_threads(), first = omp_get_thread_num() == 0;
        int sense = 0;
        if (first) rms_norm(h, (const float*)w[LN1], eps[0], x, rows, H);
        gs_barrier_wait(&bar, threads, &sense);
        for (int64_t l = 0; l < dims[LAYERS]; l++) {
            const void* const* lw = w + l * PER_LAYER;
            mm(bf, x, lw[WQ], q, rows, H, qw);
            mm(bf, x, lw[WK], k, rows, H, kw);
            mm(bf, x, lw[WV], v, rows, H, kw);
            gs_barrier_wait(&bar, threads, &sense);
            if (first)
                for (int64_t r = 0; r < rows; r++) {
                    for (int64_t j = 0; j < heads; j++) rotate(q + r * qw + j * d, cos + r * d, sin + r * d, d);
                    for (int64_t j = 0; j < kvh; j++) {
                        rotate(k + r * kw + j * d, cos + r * d, sin + r * d, d);
                        float *kc = keys[l] + r * rs + j * hs + col * d, *vc = values[l] + r * rs + j * hs + col * d;
                        for (int64_t i = 0; i < d; i++) {
                            kc[i] = k[r * kw + j * d + i];
                            vc[i] = v[r * kw + j * d + i];
                        }
                    }
                }
            gs_barrier_wait(&bar, threads, &sense);
#pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < rows * heads; t++) {
                int64_t r = t / heads, j = t % heads, off = r * rs + (j / group) * hs;
                attend(q + r * qw + j * d, keys[l] + off, values[l] + off, mask ? mask + r * n : NULL, n, d, scale,
                       p + t * n, att + r * qw + j * d);
            }
            gs_barrier_wait(&bar, threads, &sense);
            mm(bf, att, lw[WO], tmp, rows, qw, H);
            gs_barrier_wait(&bar, threads, &sense);
            if (first) {
                add(h, tmp, rows * H);
                rms_norm(h, (const float*)lw[LN2], eps[2 * l + 1], x, rows, H);
            }
            gs_barrier_wait(&bar, threads, &sense);
            mm(bf, x, lw[GATE], g, rows, H, I);
            mm(bf, x, lw[UP], u, rows, H, I);
            gs_barrier_wait(&bar, threads, &sense);
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < rows * I; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            gs_barrier_wait(&bar, threads, &sense);
            mm(bf, g, lw[DOWN], tmp, rows, I, H);
            gs_barrier_wait(&bar, threads, &sense);
            if (first) { /* the residual, then the next layer's first norm (or the final one) */
                add(h, tmp, rows * H);
                int last = l + 1 == dims[LAYERS];
                const float* nw = (const float*)(last ? w[dims[LAYERS] * PER_LAYER] : w[(l + 1) * PER_LAYER + LN1]);
                rms_norm(h, nw, eps[last ? 2 * dims[LAYERS] : 2 * (l + 1)], x, rows, H);
            }
            gs_barrier_wait(&bar, threads, &sense);
        }
        mm(bf, x, w[dims[LAYERS] * PER_LAYER + 1], logits, rows, H, dims[VOCAB]);
    }
}

/* the scratch gs_llama_step needs, in floats */
int64_t gs_llama_scratch(const int64_t* dims) {
    const int64_t rows = dims[ROWS], qw = dims[HEADS] * dims[HEAD_DIM], kw = dims[KV_HEADS] * dims[HEAD_DIM];
    return rows * (2 * dims[HIDDEN] + 2 * qw + 2 * kw + 2 * dims[INTER] + dims[HEADS] * (dims[COL] + 1));
}
