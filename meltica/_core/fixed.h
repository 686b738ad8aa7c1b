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

static inline int mt_accumulate(const char *a, const char *a_end,
                                const char *b, const char *b_end,
                                uint64_t *out) {
    /* Digits of [a, a_end) then [b, b_end) into *out; 0 on int64 overflow.
     * Up to 18 digits cannot overflow, so the checked path runs only beyond. */
    uint64_t acc = 0;
    const char *p;
    size_t nd = (size_t)(a_end - a) + (size_t)(b_end - b);
    if (nd <= 18) {
        for (p = a; p < a_end; ++p) acc = acc * 10 + (uint64_t)(*p - '0');
        for (p = b; p < b_end; ++p) acc = acc * 10 + (uint64_t)(*p - '0');
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
    uint64_t acc;
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; ++p; }
    int_start = p;
    while (p < end && (unsigned)(*p - '0') < 10u) ++p;
    int_end = p;
    if (int_end == int_start) return 0;
    frac_start = frac_end = end;
    if (p < end) {
        if (*p != '.') return 0;
        frac_start = ++p;
        while (p < end && (unsigned)(*p - '0') < 10u) ++p;
        frac_end = p;
        if (frac_end == frac_start || p != end) return 0;
    }
    if (!mt_accumulate(int_start, int_end, frac_start, frac_end, &acc)) {
        /* Too many digits: trailing fractional zeros carry no value. */
        while (frac_end > frac_start && frac_end[-1] == '0') --frac_end;
        if (!mt_accumulate(int_start, int_end, frac_start, frac_end, &acc)) return 0;
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
