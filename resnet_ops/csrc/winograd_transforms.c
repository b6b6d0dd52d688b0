/* The tile transforms of Winograd's F(4x4, 3x3) (resnet_ops/winograd.py) as one pass each over
 * memory: the PyTorch version builds the tiles with copies and applies the 2-D transforms as dense
 * 36x36 and 16x36 matrix products, several passes over data larger than the caches.
 *
 * Layouts (channels innermost; float32, or bfloat16 where a *_bf16 flag says so):
 *   image:       (H, W, C) with strides (stride_h, stride_w, 1), zero padded by one pixel around;
 *   transformed: (36, tiles, C), tile = row-major index within the strip of tile rows
 *                [first_row, first_row + count), position = 6 * a + b of V = Bt d B;
 *   products:    (36, tiles, O) as above, M = V @ U per position;
 *   output:      (H, W, O) with strides (stride_h, stride_w, 1); Y = At M A, plus the bias (float32),
 *                then max(Y, 0) if relu is set.
 * Tile (t, s) reads input pixels (4t - 1 .. 4t + 4, 4s - 1 .. 4s + 4) and writes outputs
 * (4t .. 4t + 3, 4s .. 4s + 3); pixels outside the image read as zero and are not written.
 * The arithmetic is float32 whatever the storage; bfloat16 results are rounded to nearest even,
 * as PyTorch rounds.
 *
 * Built at first use by backbones/native.py (cc -O3 -march=native -fopenmp); the loops over
 * channels are vectorized by the compiler, the loops over tiles split over the OpenMP threads
 * (the process's own OpenMP runtime: PyTorch's, when it is loaded first). */

#include <limits.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 16 /* channels per step: one AVX-512 register of floats */

/* Statuses of the exported functions (resnet_ops/winograd_transforms.py names each). */
enum {
    STATUS_OK = 0,
    STATUS_BAD_SIZES = 1,        /* a size or tile index out of range, or a null pointer */
    STATUS_SOURCE_TOO_SHORT = 2, /* the image or the products extend past their buffer */
    STATUS_TARGET_TOO_SHORT = 3, /* the transformed tiles or the output extend past their buffer */
    STATUS_BIAS_TOO_SHORT = 4,
};

/* Whether a (height, width, channels) map with unit channel stride, the given row and column
 * strides, fits in a buffer of `length` elements: its last element's offset is below `length`. */
static int map_fits(int height, int width, int channels, long stride_h, long stride_w, long length) {
    long rows, columns, last;
    if (stride_h < 0 || stride_w < 0) return 0;
    if (__builtin_mul_overflow((long)(height - 1), stride_h, &rows)) return 0;
    if (__builtin_mul_overflow((long)(width - 1), stride_w, &columns)) return 0;
    if (__builtin_add_overflow(rows, columns, &last) || __builtin_add_overflow(last, (long)(channels - 1), &last))
        return 0;
    return last < length;
}

/* Whether (36, count * tiles_w, channels) contiguous elements fit in `length`. */
static int tiles_fit(int count, int tiles_w, int channels, long length) {
    long total;
    if (__builtin_mul_overflow(36L * count, (long)tiles_w, &total)) return 0;
    if (__builtin_mul_overflow(total, (long)channels, &total)) return 0;
    return total <= length;
}

/* The sizes both transforms share: positive map sizes, tile rows and columns whose pixel
 * coordinates (4 * index + 5 at most) stay within int. */
static int sizes_valid(int height, int width, int channels, int first_row, int count, int tiles_w, int threads) {
    const long limit = (INT_MAX - 8) / 4;
    return height > 0 && width > 0 && channels > 0 && first_row >= 0 && count >= 0 && tiles_w > 0 &&
           threads > 0 && (long)first_row + count <= limit && tiles_w <= limit;
}

static inline float from_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

/* n channels from float32 or bfloat16 storage into a float block (zeros where src is NULL). */
static inline void load_block(const void *src, int bf16, float *dst, int n) {
    if (!src) {
        for (int c = 0; c < n; c++) dst[c] = 0.f;
    } else if (bf16) {
        const uint16_t *s = (const uint16_t *)src;
#pragma omp simd
        for (int c = 0; c < n; c++) dst[c] = from_bf16(s[c]);
    } else {
        const float *s = (const float *)src;
#pragma omp simd
        for (int c = 0; c < n; c++) dst[c] = s[c];
    }
}

static inline void store_block(const float *src, void *dst, int bf16, int n) {
    if (bf16) {
        uint16_t *d = (uint16_t *)dst;
#pragma omp simd
        for (int c = 0; c < n; c++) d[c] = to_bf16(src[c]);
    } else {
        float *d = (float *)dst;
#pragma omp simd
        for (int c = 0; c < n; c++) d[c] = src[c];
    }
}

/* One 6-point input transform, Bt = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
 * 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1], on n channels. */
static inline void input_1d(const float *const d[6], float *const r[6], int n) {
#pragma omp simd
    for (int c = 0; c < n; c++) {
        float d0 = d[0][c], d1 = d[1][c], d2 = d[2][c], d3 = d[3][c], d4 = d[4][c], d5 = d[5][c];
        r[0][c] = 4.f * d0 - 5.f * d2 + d4;
        r[1][c] = d3 + d4 - 4.f * (d1 + d2);
        r[2][c] = 4.f * (d1 - d2) - d3 + d4;
        r[3][c] = 2.f * (d3 - d1) - d2 + d4;
        r[4][c] = 2.f * (d1 - d3) - d2 + d4;
        r[5][c] = 4.f * d1 - 5.f * d3 + d5;
    }
}

/* One 6-point output transform, At = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]. */
static inline void output_1d(const float *const m[6], float *const o[4], int n) {
#pragma omp simd
    for (int c = 0; c < n; c++) {
        float sum12 = m[1][c] + m[2][c], diff12 = m[1][c] - m[2][c];
        float sum34 = m[3][c] + m[4][c], diff34 = m[3][c] - m[4][c];
        o[0][c] = m[0][c] + sum12 + sum34;
        o[1][c] = diff12 + 2.f * diff34;
        o[2][c] = sum12 + 4.f * sum34;
        o[3][c] = diff12 + 8.f * diff34 + m[5][c];
    }
}

/* LOOP(a, b) with the two storage flags as constants: one specialized copy of the loop for each of
 * the four combinations. */
#define DISPATCH_STORAGE(LOOP, A, B) \
    if (!(A) && !(B)) {              \
        LOOP(0, 0)                   \
    } else if (!(A)) {               \
        LOOP(0, 1)                   \
    } else if (!(B)) {               \
        LOOP(1, 0)                   \
    } else {                         \
        LOOP(1, 1)                   \
    }

/* One tile's input transform, all channel blocks. The storage flags are compile-time constants at
 * each call (the exported function dispatches once), so that float32 reads the image in place and
 * only bfloat16 goes through a converted copy. */
static inline __attribute__((always_inline)) void input_tile(
    const void *image, const int image_bf16, long stride_h, long stride_w, int height, int width, int channels,
    int top, int left, long tile, long tiles, void *transformed, const int transformed_bf16) {
    static const float zeros[BLOCK] = {0};
    float patch[6][6][BLOCK], rows[6][6][BLOCK], both[6][6][BLOCK];
    for (int c0 = 0; c0 < channels; c0 += BLOCK) {
        const int n = channels - c0 < BLOCK ? channels - c0 : BLOCK;
        const float *d[6][6];
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 6; j++) {
                const int y = top + i, x = left + j;
                const long offset = (long)y * stride_h + (long)x * stride_w + c0;
                if (!(y >= 0 && y < height && x >= 0 && x < width)) {
                    d[i][j] = zeros;
                } else if (image_bf16) {
                    load_block((const uint16_t *)image + offset, 1, patch[i][j], n);
                    d[i][j] = patch[i][j];
                } else {
                    d[i][j] = (const float *)image + offset;
                }
            }
        for (int j = 0; j < 6; j++) { /* down each column: Bt d */
            const float *column[6] = {d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]};
            float *out[6] = {rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j]};
            input_1d(column, out, n);
        }
        for (int a = 0; a < 6; a++) { /* along each row: (Bt d) B */
            const float *row[6] = {rows[a][0], rows[a][1], rows[a][2], rows[a][3], rows[a][4], rows[a][5]};
            float *out[6] = {both[a][0], both[a][1], both[a][2], both[a][3], both[a][4], both[a][5]};
            input_1d(row, out, n);
        }
        for (int position = 0; position < 36; position++) {
            const long offset = ((long)position * tiles + tile) * channels + c0;
            void *dst = transformed_bf16 ? (void *)((uint16_t *)transformed + offset)
                                         : (void *)((float *)transformed + offset);
            store_block(both[position / 6][position % 6], dst, transformed_bf16, n);
        }
    }
}

int winograd_input_transform(const void *image, long image_length, int image_bf16, long stride_h, long stride_w,
                             int height, int width, int channels, int first_row, int count, int tiles_w,
                             void *transformed, long transformed_length, int transformed_bf16, int threads) {
    if (!image || !transformed || !sizes_valid(height, width, channels, first_row, count, tiles_w, threads))
        return STATUS_BAD_SIZES;
    if (!map_fits(height, width, channels, stride_h, stride_w, image_length)) return STATUS_SOURCE_TOO_SHORT;
    if (!tiles_fit(count, tiles_w, channels, transformed_length)) return STATUS_TARGET_TOO_SHORT;
    const long tiles = (long)count * tiles_w;
#define INPUT_TILES(IMAGE_BF16, TRANSFORMED_BF16)                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                       \
    for (long tile = 0; tile < tiles; tile++)                                                                \
        input_tile(image, IMAGE_BF16, stride_h, stride_w, height, width, channels,                          \
                   4 * (first_row + (int)(tile / tiles_w)) - 1, 4 * (int)(tile % tiles_w) - 1, tile, tiles, \
                   transformed, TRANSFORMED_BF16);
    DISPATCH_STORAGE(INPUT_TILES, image_bf16, transformed_bf16)
#undef INPUT_TILES
    return STATUS_OK;
}

/* max(x, 0) if relu, else x; NaN stays NaN, as in torch.relu. */
static inline float relu_if(float x, int relu) { return relu && x < 0.f ? 0.f : x; }

/* One tile's output transform, all channel blocks (flags as for input_tile). */
static inline __attribute__((always_inline)) void output_tile(
    const void *products, const int products_bf16, const float *bias, int relu, int channels, int top, int left,
    long tile, long tiles, void *output, const int output_bf16, long stride_h, long stride_w, int height,
    int width) {
    static const float zeros[BLOCK] = {0};
    float converted[6][6][BLOCK], half[4][6][BLOCK], result[4][4][BLOCK];
    for (int c0 = 0; c0 < channels; c0 += BLOCK) {
        const int n = channels - c0 < BLOCK ? channels - c0 : BLOCK;
        const float *m[6][6];
        for (int position = 0; position < 36; position++) {
            const long offset = ((long)position * tiles + tile) * channels + c0;
            const int i = position / 6, j = position % 6;
            if (products_bf16) {
                load_block((const uint16_t *)products + offset, 1, converted[i][j], n);
                m[i][j] = converted[i][j];
            } else {
                m[i][j] = (const float *)products + offset;
            }
        }
        for (int j = 0; j < 6; j++) { /* down each column: At M */
            const float *column[6] = {m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j]};
            float *out[4] = {half[0][j], half[1][j], half[2][j], half[3][j]};
            output_1d(column, out, n);
        }
        for (int a = 0; a < 4; a++) { /* along each row: (At M) A */
            const float *row[6] = {half[a][0], half[a][1], half[a][2], half[a][3], half[a][4], half[a][5]};
            float *out[4] = {result[a][0], result[a][1], result[a][2], result[a][3]};
            output_1d(row, out, n);
        }
        for (int a = 0; a < 4 && top + a < height; a++)
            for (int b = 0; b < 4 && left + b < width; b++) {
                float *value = result[a][b];
                const float *shift = bias ? bias + c0 : zeros;
                const long offset = (long)(top + a) * stride_h + (long)(left + b) * stride_w + c0;
                if (output_bf16) {
#pragma omp simd
                    for (int c = 0; c < n; c++) value[c] = relu_if(value[c] + shift[c], relu);
                    store_block(value, (uint16_t *)output + offset, 1, n);
                } else {
                    float *dst = (float *)output + offset;
#pragma omp simd
                    for (int c = 0; c < n; c++) dst[c] = relu_if(value[c] + shift[c], relu);
                }
            }
    }
}

int winograd_output_transform(const void *products, long products_length, int products_bf16, const float *bias,
                              long bias_length, int relu, int channels, int first_row, int count, int tiles_w,
                              void *output, long output_length, int output_bf16, long stride_h, long stride_w,
                              int height, int width, int threads) {
    if (!products || !output || !sizes_valid(height, width, channels, first_row, count, tiles_w, threads))
        return STATUS_BAD_SIZES;
    if (!tiles_fit(count, tiles_w, channels, products_length)) return STATUS_SOURCE_TOO_SHORT;
    if (!map_fits(height, width, channels, stride_h, stride_w, output_length)) return STATUS_TARGET_TOO_SHORT;
    if (bias && bias_length < channels) return STATUS_BIAS_TOO_SHORT;
    const long tiles = (long)count * tiles_w;
#define OUTPUT_TILES(PRODUCTS_BF16, OUTPUT_BF16)                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                      \
    for (long tile = 0; tile < tiles; tile++)                                                               \
        output_tile(products, PRODUCTS_BF16, bias, relu, channels, 4 * (first_row + (int)(tile / tiles_w)), \
                    4 * (int)(tile % tiles_w), tile, tiles, output, OUTPUT_BF16, stride_h, stride_w, height, \
                    width);
    DISPATCH_STORAGE(OUTPUT_TILES, products_bf16, output_bf16)
#undef OUTPUT_TILES
    return STATUS_OK;
}
