/* One vocabulary block of the streamed lens (workflow/lens.py, stream_statistics), fused.
 *
 * For each row r of the raw logits z[r, 0:width] (row stride ld) this does in one sweep
 * what the torch path does in seven passes over the block: the block's largest logit,
 * the count of logits above the answer's, and, against the row's reference s_r,
 * t = z - s_r, e = exp(max(t, EXP_FLOOR)), S += sum e, Q += sum e*t. A row whose block
 * maximum exceeds its reference by more than rebase_above first moves its reference up
 * to that maximum (S and Q rescaled, delta[r] set so the caller can rescale what it
 * keeps against the old reference).
 *
 * The final rows (final_start onwards, the last rows; row r's final row is
 * final_start + r % n_pos) also write their e to e_out and keep S before this block in
 * final_prev; every other row accumulates cross = sum e_final * t against them, for
 * KL(final || row) = (Q_f - cross) / S_f - log S_f + log S. So the caller runs the final
 * rows first, then the others. Rows are independent within each of those two calls, and
 * the caller splits them between threads (ctypes releases the GIL).
 * No OpenMP: its thread pool would compete with PyTorch's on the same cores.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXP_FLOOR (-87.0f)
#define EXP_CEIL (88.0f)
#define CHUNK 512
#define LANES 16

/* exp(x) for x in [EXP_FLOOR, EXP_CEIL], within 2 ulp of the correctly rounded result:
 * x = k ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its Taylor
 * polynomial to degree 7 (truncation below 6e-9 relative), times 2^k built in the
 * exponent bits. Written so that the compiler vectorises the loops that call it; fmaf is
 * rounded once on every processor (an FMA instruction where there is one), so the result
 * does not depend on the instruction set. */
static inline float exp_bounded(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.42860682030941723212e-6f;
    float k = nearbyintf(x * log2e);
    float r = fmaf(-k, ln2_lo, fmaf(-k, ln2_hi, x));
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void lens_block(const float *z, int64_t row_begin, int64_t row_end, int64_t width, int64_t ld,
                const float *answer, int64_t n_answer, float rebase_above,
                double *shift, double *S, double *Q, double *cross, int64_t *count, float *block_max, double *delta,
                float *e_out, double *final_prev, int64_t final_start, int64_t n_pos) {
    for (int64_t r = row_begin; r < row_end; ++r) {
        const float *row = z + r * ld;
        float m = -INFINITY;
        int64_t above = 0;
        const float a = r < n_answer ? answer[r] : INFINITY;
#pragma omp simd reduction(max : m) reduction(+ : above)
        for (int64_t v = 0; v < width; ++v) {
            m = row[v] > m ? row[v] : m;
            above += row[v] > a;
        }
        block_max[r] = m;
        count[r] += above;
        const int final_row = r >= final_start;
        const int64_t f = final_start + r % n_pos; /* this row's final row */
        double d = 0.0;
        if ((double)m - shift[r] > rebase_above) {
            d = (double)m - shift[r];
            const double scale = exp(-d);
            Q[r] = scale * (Q[r] - d * S[r]);
            S[r] *= scale;
            shift[r] = (double)m;
        }
        delta[r] = d;
        if (!final_row) {
            /* cross = sum e_f t_r against the final row's reference and this row's: follow
             * the final row's move (its e scale by exp(-delta_f)), then this row's (t moves
             * by d, so cross by d times the final row's sum over the earlier blocks). */
            if (delta[f] != 0.0)
                cross[r] *= exp(-delta[f]);
            cross[r] -= d * final_prev[f - final_start];
        } else {
            final_prev[r - final_start] = S[r];
        }
        /* The reference is held in double; t is formed in float from its float value. The
         * sums run in float over chunks of CHUNK values and in double across chunks, so a
         * wide block loses no more than a narrow one. Within a chunk, value v goes to lane
         * (v - c0) % LANES and the lanes are added in a fixed tree: the order of every
         * addition is the source's, so a build for AVX-512, AVX2 or plain SSE2 gives the same
         * bits (with -ffp-contract=off, no product is fused into a sum behind our back). */
        const float sf = (float)shift[r];
        double total_e = 0.0, total_et = 0.0, total_ft = 0.0;
        float *e_row = final_row ? e_out + (r - final_start) * width : 0;
        const float *e_final = final_row ? 0 : e_out + (f - final_start) * width;
        for (int64_t c0 = 0; c0 < width; c0 += CHUNK) {
            const int64_t c1 = c0 + CHUNK < width ? c0 + CHUNK : width;
            float acc_e[LANES] = {0}, acc_et[LANES] = {0}, acc_ft[LANES] = {0};
            int64_t v = c0;
            if (final_row) {
                for (; v + LANES <= c1; v += LANES)
                    for (int j = 0; j < LANES; ++j) {
                        const float t = row[v + j] - sf;
                        const float e = exp_bounded(t < EXP_FLOOR ? EXP_FLOOR : (t > EXP_CEIL ? EXP_CEIL : t));
                        e_row[v + j] = e;
                        acc_e[j] += e;
                        acc_et[j] = fmaf(e, t, acc_et[j]);
                    }
                for (int j = 0; v < c1; ++v, ++j) {
                    const float t = row[v] - sf;
                    const float e = exp_bounded(t < EXP_FLOOR ? EXP_FLOOR : (t > EXP_CEIL ? EXP_CEIL : t));
                    e_row[v] = e;
                    acc_e[j] += e;
                    acc_et[j] = fmaf(e, t, acc_et[j]);
                }
            } else {
                for (; v + LANES <= c1; v += LANES)
                    for (int j = 0; j < LANES; ++j) {
                        const float t = row[v + j] - sf;
                        const float e = exp_bounded(t < EXP_FLOOR ? EXP_FLOOR : (t > EXP_CEIL ? EXP_CEIL : t));
                        acc_e[j] += e;
                        acc_et[j] = fmaf(e, t, acc_et[j]);
                        acc_ft[j] = fmaf(e_final[v + j], t, acc_ft[j]);
                    }
                for (int j = 0; v < c1; ++v, ++j) {
                    const float t = row[v] - sf;
                    const float e = exp_bounded(t < EXP_FLOOR ? EXP_FLOOR : (t > EXP_CEIL ? EXP_CEIL : t));
                    acc_e[j] += e;
                    acc_et[j] = fmaf(e, t, acc_et[j]);
                    acc_ft[j] = fmaf(e_final[v], t, acc_ft[j]);
                }
            }
            for (int w = LANES / 2; w > 0; w /= 2)
                for (int j = 0; j < w; ++j) {
                    acc_e[j] += acc_e[j + w];
                    acc_et[j] += acc_et[j + w];
                    acc_ft[j] += acc_ft[j + w];
                }
            total_e += acc_e[0];
            total_et += acc_et[0];
            total_ft += acc_ft[0];
        }
        S[r] += total_e;
        Q[r] += total_et;
        cross[r] = final_row ? Q[r] : cross[r] + total_ft;
    }
}
