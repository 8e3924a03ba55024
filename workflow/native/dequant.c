/* GGUF blocks dequantised to float32: Q8_0, Q4_K, Q5_K and Q6_K (the types of Q4_K_M,
 * Q5_K_M, Q6_K and Q8_0 files), with the arithmetic of gguf-py's numpy dequantisers
 * (gguf/quants.py) operation for operation, so the values are the same bits: every scale
 * is a float16 widened exactly, multiplied in float32, and a product is never fused into
 * a sum (built with -ffp-contract=off).
 *
 * dequantise(type, blocks, first, end, out): blocks first..end-1 of the byte array
 * ``blocks`` (the type's block size each) into out[first * values per block ...].
 * Returns 0, or -1 for a type this file does not handle.
 */
#include <stdint.h>
#include <string.h>

#define QK_K 256

static float half_to_float(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, bits;
    if (exponent == 0x1Fu) {
        bits = sign | 0x7F800000u | (mantissa << 13);  /* inf, or NaN with its payload (as numpy) */
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {  /* subnormal: normalise */
        exponent = 113u;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void q8_0(const uint8_t *b, float *out) {
    float d = half_to_float(b);
    for (int i = 0; i < 32; i++) out[i] = (float)(int8_t)b[2 + i] * d;
}

/* Q4_K and Q5_K: the eight 6-bit scales and minimums packed in twelve bytes. */
static void scale_min(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
}

static void q4_k(const uint8_t *b, float *out) {
    float d = half_to_float(b), dmin = half_to_float(b + 2);
    uint8_t sc[8], mn[8];
    scale_min(b + 4, sc, mn);
    const uint8_t *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        float dd = d * (float)sc[j], dm = dmin * (float)mn[j];
        const uint8_t *q = qs + (j / 2) * 32;
        int shift = 4 * (j % 2);
        for (int l = 0; l < 32; l++) {
            float product = dd * (float)((q[l] >> shift) & 0x0F);
            out[j * 32 + l] = product - dm;
        }
    }
}

static void q5_k(const uint8_t *b, float *out) {
    float d = half_to_float(b), dmin = half_to_float(b + 2);
    uint8_t sc[8], mn[8];
    scale_min(b + 4, sc, mn);
    const uint8_t *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j++) {
        float dd = d * (float)sc[j], dm = dmin * (float)mn[j];
        const uint8_t *q = qs + (j / 2) * 32;
        int shift = 4 * (j % 2);
        for (int l = 0; l < 32; l++) {
            int value = ((q[l] >> shift) & 0x0F) | (((qh[l] >> j) & 0x01) << 4);
            float product = dd * (float)value;
            out[j * 32 + l] = product - dm;
        }
    }
}

static void q6_k(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    float d = half_to_float(b + 208);
    /* value f = 128 c + r: its low four bits from ql[64 c + r % 64] (nibble r / 64), its
     * high two from qh[32 c + r % 32] (pair r / 32); its scale scales[f / 16]. */
    for (int c = 0; c < 2; c++) {
        for (int s = 0; s < 4; s++) {
            const uint8_t *low = ql + c * 64 + (s % 2) * 32, *high = qh + c * 32;
            int low_shift = 4 * (s / 2), high_shift = 2 * s;
            float *o = out + c * 128 + s * 32;
            float d0 = d * (float)scales[(c * 128 + s * 32) / 16], d1 = d * (float)scales[(c * 128 + s * 32) / 16 + 1];
            for (int l = 0; l < 32; l++) {
                int8_t q = (int8_t)(uint8_t)(((low[l] >> low_shift) & 0x0F) | (((high[l] >> high_shift) & 0x03) << 4));
                q = (int8_t)(q - 32);
                o[l] = (l < 16 ? d0 : d1) * (float)q;
            }
        }
    }
}

int dequantise(int type, const uint8_t *blocks, int64_t first, int64_t end, float *out) {
    switch (type) {
    case 8:
        for (int64_t i = first; i < end; i++) q8_0(blocks + i * 34, out + i * 32);
        return 0;
    case 12:
        for (int64_t i = first; i < end; i++) q4_k(blocks + i * 144, out + i * QK_K);
        return 0;
    case 13:
        for (int64_t i = first; i < end; i++) q5_k(blocks + i * 176, out + i * QK_K);
        return 0;
    case 14:
        for (int64_t i = first; i < end; i++) q6_k(blocks + i * 210, out + i * QK_K);
        return 0;
    default:
        return -1;
    }
}
