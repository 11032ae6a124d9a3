/* A decode step's LoRA for a few rows on several adapters, in one call:
   out[row] += (scale * x[row] @ a[slot]) @ b[slot] for each (row, slot) pair, over the block diagonal of b only.
   a is (slots, in, rr) and b (slots, rr, width), both contiguous and in the rows' dtype: the layer's `Fused` weights
   (service/engine/cpu_lora.py), whose bf16 copies are exactly vLLM's bf16 weights. Each row's sums are float32 and
   reach `out` with one rounding. Built by service/engine/cpu_lora_kernel.py for the CPU it runs on, or, for an image
   whose CPU is not known when it is built, with SKILLSERVE_CLONES: one copy per x86-64 level, the best the CPU has
   chosen when the library loads. */
#include <stdint.h>
#include <string.h>

#ifdef SKILLSERVE_CLONES
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline float from_bf16(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch does; a NaN stays a NaN. */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* How far ahead of its reads the kernel asks for the weights it reads next, in bytes. A step reads each row's
   adapter once, from memory (the base's weights between two layers push them out of the caches), and the processor's
   own prefetching did not keep up (docs/performance.md, "The decode kernel's reads"). */
#define AHEAD 2048
#define LINE 64

/* Asks for `bytes` bytes from `p` on, a cache line at a time; an address past an array's end is harmless. */
static inline void ask(const void *p, int64_t bytes) {
    for (int64_t i = 0; i < bytes; i += LINE) __builtin_prefetch((const char *)p + i);
}

/* blocks: n_blocks x (rank start, rank stop, column start, column stop); rows: n x (row, slot).
   The shrink adds four of A's rows (four k) into the running sums h at once, and the expand four of B's (four ranks)
   into y: the sums are read and written a quarter as often as one row at a time, which kept them waiting on their
   own stores. Each is float32, so the order is a float32 reduction's, within its rounding. */
#define LORA_ROWS(NAME, T, LOAD, ADD)                                                                                  \
    CLONES void NAME(const T *a, const T *b, int64_t in, int64_t rr, int64_t width, const int64_t *blocks,             \
              int64_t n_blocks, const int64_t *rows, int64_t n, const T *x, int64_t x_stride, T *out,                  \
              int64_t out_stride, float scale) {                                                                       \
        float h[rr], y[width];                                                                                         \
        for (int64_t i = 0; i < n; i++) {                                                                              \
            int64_t row = rows[2 * i], slot = rows[2 * i + 1];                                                         \
            const T *xr = x + row * x_stride;                                                                          \
            const T *as = a + slot * in * rr, *bs = b + slot * rr * width;                                             \
            for (int64_t r = 0; r < rr; r++) h[r] = 0.f;                                                               \
            int64_t k = 0;                                                                                             \
            for (; k + 4 <= in; k += 4) {                                                                              \
                float x0 = LOAD(xr[k]), x1 = LOAD(xr[k + 1]), x2 = LOAD(xr[k + 2]), x3 = LOAD(xr[k + 3]);              \
                const T *a0 = as + k * rr, *a1 = a0 + rr, *a2 = a1 + rr, *a3 = a2 + rr;                                \
                ask((const char *)a0 + AHEAD, 4 * rr * (int64_t)sizeof(T));                                            \
                for (int64_t r = 0; r < rr; r++)                                                                       \
                    h[r] += (x0 * LOAD(a0[r]) + x1 * LOAD(a1[r])) + (x2 * LOAD(a2[r]) + x3 * LOAD(a3[r]));             \
            }                                                                                                          \
            for (; k < in; k++) {                                                                                      \
                float xk = LOAD(xr[k]);                                                                                \
                const T *ak = as + k * rr;                                                                             \
                for (int64_t r = 0; r < rr; r++) h[r] += xk * LOAD(ak[r]);                                             \
            }                                                                                                          \
            for (int64_t c = 0; c < width; c++) y[c] = 0.f;                                                            \
            for (int64_t j = 0; j < n_blocks; j++) {                                                                   \
                const int64_t *blk = blocks + 4 * j;                                                                   \
                int64_t r = blk[0], c0 = blk[2], c1 = blk[3], cols = (c1 - c0) * (int64_t)sizeof(T);                   \
                for (; r + 4 <= blk[1]; r += 4) {                                                                      \
                    float h0 = h[r] * scale, h1 = h[r + 1] * scale, h2 = h[r + 2] * scale, h3 = h[r + 3] * scale;      \
                    const T *b0 = bs + r * width, *b1 = b0 + width, *b2 = b1 + width, *b3 = b2 + width;                \
                    for (int64_t next = 1; next <= 4; next++) ask(b3 + next * width + c0, cols);                       \
                    for (int64_t c = c0; c < c1; c++)                                                                  \
                        y[c] += (h0 * LOAD(b0[c]) + h1 * LOAD(b1[c])) + (h2 * LOAD(b2[c]) + h3 * LOAD(b3[c]));         \
                }                                                                                                      \
                for (; r < blk[1]; r++) {                                                                              \
                    float hr = h[r] * scale;                                                                           \
                    const T *br = bs + r * width;                                                                      \
                    for (int64_t c = c0; c < c1; c++) y[c] += hr * LOAD(br[c]);                                        \
                }                                                                                                      \
            }                                                                                                          \
            T *o = out + row * out_stride;                                                                             \
            for (int64_t c = 0; c < width; c++) ADD;                                                                   \
        }                                                                                                              \
    }

#define SAME(v) (v)
LORA_ROWS(lora_rows_float32, float, SAME, o[c] += y[c])
LORA_ROWS(lora_rows_bfloat16, uint16_t, from_bf16, o[c] = to_bf16(from_bf16(o[c]) + y[c]))
