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

/* blocks: n_blocks x (rank start, rank stop, column start, column stop); rows: n x (row, slot). */
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
            for (int64_t k = 0; k < in; k++) {                                                                         \
                float xk = LOAD(xr[k]);                                                                                \
                const T *ak = as + k * rr;                                                                             \
                for (int64_t r = 0; r < rr; r++) h[r] += xk * LOAD(ak[r]);                                             \
            }                                                                                                          \
            for (int64_t c = 0; c < width; c++) y[c] = 0.f;                                                            \
            for (int64_t j = 0; j < n_blocks; j++) {                                                                   \
                const int64_t *blk = blocks + 4 * j;                                                                   \
                for (int64_t r = blk[0]; r < blk[1]; r++) {                                                            \
                    float hr = h[r] * scale;                                                                           \
                    const T *br = bs + r * width;                                                                      \
                    for (int64_t c = blk[2]; c < blk[3]; c++) y[c] += hr * LOAD(br[c]);                                \
                }                                                                                                      \
            }                                                                                                          \
            T *o = out + row * out_stride;                                                                             \
            for (int64_t c = 0; c < width; c++) ADD;                                                                   \
        }                                                                                                              \
    }

#define SAME(v) (v)
LORA_ROWS(lora_rows_float32, float, SAME, o[c] += y[c])
LORA_ROWS(lora_rows_bfloat16, uint16_t, from_bf16, o[c] = to_bf16(from_bf16(o[c]) + y[c]))
