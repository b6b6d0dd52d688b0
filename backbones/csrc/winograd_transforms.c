/* The tile transforms of Winograd's F(4x4, 3x3) (backbones/winograd.py) as one pass each over
 * memory: the PyTorch version builds the tiles with copies and applies the 2-D transforms as dense
 * 36x36 and 16x36 matrix products, several passes over data larger than the caches.
 *
 * Layouts (float32, channels innermost):
 *   image:       (H, W, C) with strides (stride_h, stride_w, 1), zero padded by one pixel around;
 *   transformed: (36, tiles, C), tile = row-major index within the strip of tile rows
 *                [first_row, first_row + count), position = 6 * a + b of V = Bt d B;
 *   products:    (36, tiles, O) as above, M = V @ U per position;
 *   output:      (H, W, O) with strides (stride_h, stride_w, 1); Y = At M A, plus the bias.
 * Tile (t, s) reads input pixels (4t - 1 .. 4t + 4, 4s - 1 .. 4s + 4) and writes outputs
 * (4t .. 4t + 3, 4s .. 4s + 3); pixels outside the image read as zero and are not written.
 *
 * Built at first use by backbones/native.py (cc -O3 -march=native -fopenmp); the loops over
 * channels are vectorized by the compiler, the loops over tiles split over the OpenMP threads
 * (the process's own OpenMP runtime: PyTorch's, when it is loaded first). */

#include <stddef.h>

#define BLOCK 16 /* channels per step: one AVX-512 register of floats */

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

void winograd_input_transform(const float *image, long stride_h, long stride_w, int height, int width,
                              int channels, int first_row, int count, int tiles_w, float *transformed,
                              int threads) {
    static const float zeros[BLOCK] = {0};
    const long tiles = (long)count * tiles_w;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long tile = 0; tile < tiles; tile++) {
        const int top = 4 * (first_row + (int)(tile / tiles_w)) - 1, left = 4 * (int)(tile % tiles_w) - 1;
        float rows[6][6][BLOCK], both[6][6][BLOCK];
        for (int c0 = 0; c0 < channels; c0 += BLOCK) {
            const int n = channels - c0 < BLOCK ? channels - c0 : BLOCK;
            const float *d[6][6];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++) {
                    const int y = top + i, x = left + j;
                    d[i][j] = (y >= 0 && y < height && x >= 0 && x < width)
                                  ? image + y * stride_h + x * stride_w + c0 : zeros;
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
                float *dst = transformed + ((long)position * tiles + tile) * channels + c0;
                const float *src = both[position / 6][position % 6];
#pragma omp simd
                for (int c = 0; c < n; c++) dst[c] = src[c];
            }
        }
    }
}

void winograd_output_transform(const float *products, const float *bias, int channels, int first_row,
                               int count, int tiles_w, float *output, long stride_h, long stride_w,
                               int height, int width, int threads) {
    const long tiles = (long)count * tiles_w;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long tile = 0; tile < tiles; tile++) {
        const int top = 4 * (first_row + (int)(tile / tiles_w)), left = 4 * (int)(tile % tiles_w);
        float half[4][6][BLOCK], result[4][4][BLOCK];
        for (int c0 = 0; c0 < channels; c0 += BLOCK) {
            const int n = channels - c0 < BLOCK ? channels - c0 : BLOCK;
            const float *m[6][6];
            for (int position = 0; position < 36; position++)
                m[position / 6][position % 6] = products + ((long)position * tiles + tile) * channels + c0;
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
                    float *dst = output + (top + a) * stride_h + (left + b) * stride_w + c0;
                    const float *src = result[a][b];
                    if (bias) {
#pragma omp simd
                        for (int c = 0; c < n; c++) dst[c] = src[c] + bias[c0 + c];
                    } else {
#pragma omp simd
                        for (int c = 0; c < n; c++) dst[c] = src[c];
                    }
                }
        }
    }
}
