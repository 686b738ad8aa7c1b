/* Exact decimal <-> scaled int64 conversion, shared by every _core module.
 *
 * A decimal string "-123.4500" becomes mantissa -1234500 and exponent -4: the
 * exponent is minus the number of fractional digits, so formatting the pair
 * back gives the exchange's own string.  Only when the mantissa would overflow
 * int64 are trailing fractional zeros dropped (the value is unchanged); if it
 * still does not fit, the conversion fails.  No floats anywhere.
 */
#ifndef MELTICA_FIXED_H
#define MELTICA_FIXED_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* "absent" markers: an int64 field the exchange did not send, and the
 * exponent of a decimal field the exchange did not send. */
#define MT_NA INT64_MIN
#define MT_DEC_NA 127

/* One price level of a depth event or book, prices and quantities scaled. */
typedef struct mt_level {
    int64_t price;
    int64_t qty;
    int8_t price_exp;
    int8_t qty_exp;
} mt_level;

/* Longest fraction accepted: keeps the exponent inside int8 and the
 * formatting buffer bounded. */
#define MT_MAX_FRAC 60

/* Eight ASCII digits, little-endian in v, to their value: pairs, then
 * quads, then the whole (three multiply-add steps instead of eight). */
static inline uint64_t mt_eight_digits(uint64_t v) {
    v -= UINT64_C(0x3030303030303030);
    v = (v * 10) + (v >> 8);
    v = (((v & UINT64_C(0x000000FF000000FF)) * UINT64_C(0x000F424000000064)) +
         (((v >> 16) & UINT64_C(0x000000FF000000FF)) * UINT64_C(0x0000271000000001))) >> 32;
    return v;
}

/* True when all eight bytes of v are ASCII '0'..'9'. */
static inline int mt_all_digits(uint64_t v) {
    return (((v & UINT64_C(0xF0F0F0F0F0F0F0F0)) |
             (((v + UINT64_C(0x0606060606060606)) & UINT64_C(0xF0F0F0F0F0F0F0F0)) >> 4)) ==
            UINT64_C(0x3333333333333333));
}

static const uint64_t mt_pow10[9] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000,
};

/* Skip the run of digits at p, folding them into *acc (no overflow check:
 * callers bound the count).  Returns the first non-digit.  Reads eight bytes
 * at a time while eight remain: the first non-digit byte of a chunk is found
 * with a mask, and the digits before it are converted in one step. */
static inline const char *mt_scan_digits(const char *p, const char *end, uint64_t *acc) {
    uint64_t a = *acc, chunk, x, nondigit, left;
    int k;
    while (end - p >= 8) {
        memcpy(&chunk, p, 8);
        /* digits become 0x00..0x09; any other byte gets a bit in its high nibble
         * (a carry out of x + 6 only reaches later bytes, past the first stop) */
        x = chunk ^ UINT64_C(0x3030303030303030);
        nondigit = (x | (x + UINT64_C(0x0606060606060606))) & UINT64_C(0xF0F0F0F0F0F0F0F0);
        if (nondigit == 0) {
            a = a * UINT64_C(100000000) + mt_eight_digits(chunk);
            p += 8;
            continue;
        }
        k = __builtin_ctzll(nondigit) >> 3; /* digits before the first non-digit */
        if (k) {
            /* move the k digits to the top and pad the bottom with '0's */
            left = (chunk << (8 * (8 - k))) | (UINT64_C(0x3030303030303030) >> (8 * k));
            a = a * mt_pow10[k] + mt_eight_digits(left);
            p += k;
        }
        *acc = a;
        return p;
    }
    while (p < end && (unsigned)(*p - '0') < 10u) {
        a = a * 10 + (uint64_t)(*p - '0');
        ++p;
    }
    *acc = a;
    return p;
}

static inline int mt_accumulate(const char *a, const char *a_end,
                                const char *b, const char *b_end,
                                uint64_t *out) {
    /* Digits of [a, a_end) then [b, b_end) into *out; 0 on int64 overflow.
     * Up to 18 digits cannot overflow, so the checked path runs only beyond. */
    uint64_t acc = 0;
    const char *p;
    size_t nd = (size_t)(a_end - a) + (size_t)(b_end - b);
    if (nd <= 18) {
        mt_scan_digits(a, a_end, &acc);
        mt_scan_digits(b, b_end, &acc);
        *out = acc;
        return 1;
    }
    for (p = a; p < a_end; ++p) {
        uint64_t d = (uint64_t)(*p - '0');
        if (acc > (UINT64_C(9223372036854775807) - d) / 10) return 0;
        acc = acc * 10 + d;
    }
    for (p = b; p < b_end; ++p) {
        uint64_t d = (uint64_t)(*p - '0');
        if (acc > (UINT64_C(9223372036854775807) - d) / 10) return 0;
        acc = acc * 10 + d;
    }
    *out = acc;
    return 1;
}

/* Parse "-?[0-9]+(\.[0-9]+)?" exactly.  Returns 1 and sets *m, *e on success,
 * 0 when the text is not a plain decimal or does not fit. */
static inline int mt_parse_fixed(const char *s, size_t n, int64_t *m, int *e) {
    const char *p = s, *end = s + n;
    const char *int_start, *int_end, *frac_start, *frac_end;
    uint64_t acc = 0;
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; ++p; }
    int_start = p;
    p = mt_scan_digits(p, end, &acc); /* may wrap past 18 digits: rechecked below */
    int_end = p;
    if (int_end == int_start) return 0;
    frac_start = frac_end = p;
    if (p < end) {
        if (*p != '.') return 0;
        frac_start = ++p;
        p = mt_scan_digits(p, end, &acc);
        frac_end = p;
        if (frac_end == frac_start || p != end) return 0;
    }
    if ((size_t)(int_end - int_start) + (size_t)(frac_end - frac_start) > 18) {
        /* Too many digits for int64: drop as few trailing fractional zeros as
         * make it fit (they carry no value).  More than 19 digits never fit,
         * so those go in one step; then at most one more. */
        /* significant digits: leading zeros carry no value either */
        const char *q = int_start;
        size_t nd = (size_t)(int_end - int_start) + (size_t)(frac_end - frac_start);
        size_t tz = 0, drop;
        while (q < int_end && *q == '0') { ++q; --nd; }
        if (q == int_end) {
            q = frac_start;
            while (q < frac_end && *q == '0') { ++q; --nd; }
        }
        drop = nd > 19 ? nd - 19 : 0;
        while (frac_end - tz > frac_start && frac_end[-1 - (ptrdiff_t)tz] == '0') ++tz;
        if (drop > tz) return 0;
        frac_end -= drop;
        tz -= drop;
        if (!mt_accumulate(int_start, int_end, frac_start, frac_end, &acc)) {
            if (tz == 0) return 0;
            --frac_end;
            if (!mt_accumulate(int_start, int_end, frac_start, frac_end, &acc)) return 0;
        }
    }
    if (frac_end - frac_start > MT_MAX_FRAC) return 0;
    *m = neg ? -(int64_t)acc : (int64_t)acc;
    *e = -(int)(frac_end - frac_start);
    return 1;
}

/* Format (m, e) into buf (at least 96 bytes); returns the length. */
static inline size_t mt_format_fixed(int64_t m, int e, char *buf) {
    char digits[24];
    size_t nd = 0, frac = (size_t)(e < 0 ? -e : 0), len = 0, i;
    uint64_t u = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
    do { digits[nd++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (m < 0) buf[len++] = '-';
    if (nd <= frac) {
        buf[len++] = '0';
        buf[len++] = '.';
        for (i = nd; i < frac; ++i) buf[len++] = '0';
        while (nd) buf[len++] = digits[--nd];
    } else {
        while (nd > frac) buf[len++] = digits[--nd];
        if (frac) {
            buf[len++] = '.';
            while (nd) buf[len++] = digits[--nd];
        }
    }
    /* positive exponents do not occur in parsed values; keep them exact */
    for (i = 0; e > 0 && i < (size_t)e; ++i) buf[len++] = '0';
    buf[len] = 0;
    return len;
}

#endif
