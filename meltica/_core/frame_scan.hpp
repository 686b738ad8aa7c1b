// The fast path: one strict scalar pass over the frames Binance actually sends.
//
// Binance market-data frames are compact ASCII JSON of a handful of fixed
// shapes: {"stream":"..","data":{..}} around a flat object of strings,
// integers and booleans, with depth levels as [["price","qty"],..] and at most
// one nested object (a kline's `k`, a forceOrder's `o`).  For those, running
// simdjson's stage 1 (structural indexing) and then the On-Demand walk costs
// more than the whole frame is worth; a single byte-at-a-time pass that fills
// the same Frame/Fields tables as frame_walk.hpp does is about twice as fast.
//
// The contract that keeps this honest: scan_frame either fills `fr` with
// exactly what frame_walk.hpp's parse_frame would fill for the same bytes and
// returns ST_OK, or returns SC_BAIL having decided nothing, and the caller
// runs simdjson.  It accepts only a strict subset of valid JSON (no
// whitespace between tokens, no escapes, no non-ASCII bytes, no floats, no
// leading zeros, no unknown nesting, no acks) and bails on anything else, so
// every error, every unusual but valid frame and every judgement about
// malformed input stays with simdjson.
// tests/test_parser_fast_path.py checks the equivalence on the captures and
// on generated, mutated and truncated frames.
//
// The caller must put a NUL at buf[len] (the parser's buffer has
// SIMDJSON_PADDING bytes there): NUL stops every inner loop, so no loop needs
// a bounds check, and a NUL inside the frame simply makes the scan bail.
#ifndef MELTICA_FRAME_SCAN_HPP
#define MELTICA_FRAME_SCAN_HPP

#include <cstdint>
#include <cstring>
#include <string_view>

#include "frame.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mt {

constexpr int SC_BAIL = -1;

// The pass is a handful of tiny steps per field; calls would cost more than
// the steps.
#if defined(__GNUC__) || defined(__clang__)
#define MT_SCAN_INLINE inline __attribute__((always_inline))
#else
#define MT_SCAN_INLINE inline
#endif

namespace scan {

// 1 for the bytes that end a fast string: '"', '\\', controls (NUL included)
// and everything outside ASCII.
struct StopTable {
    uint8_t t[256];
    constexpr StopTable() : t() {
        for (int c = 0; c < 256; ++c) t[c] = (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') ? 1 : 0;
    }
};
constexpr StopTable kStop{};

// The first stop byte at or after p.  The SSE2 loop reads 16 bytes at a time
// and may look up to 15 bytes past the NUL at the frame's end, which the
// parser's SIMDJSON_PADDING (64 bytes) covers.
MT_SCAN_INLINE const char *find_stop(const char *p) noexcept {
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i bslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    for (;;) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
        // signed compare: bytes >= 0x80 are negative, so "< 0x20" takes both
        // controls and non-ASCII
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                   _mm_cmplt_epi8(v, space));
        unsigned m = unsigned(_mm_movemask_epi8(hit));
        if (m) return p + __builtin_ctz(m);
        p += 16;
    }
#else
    while (!kStop.t[static_cast<unsigned char>(*p)]) ++p;
    return p;
#endif
}

// p at the opening quote; returns the byte after the closing quote, or
// nullptr for anything but a plain ASCII string without escapes.
MT_SCAN_INLINE const char *str(const char *p, std::string_view &out) noexcept {
    const char *s = p + 1;
    p = find_stop(s);
    if (*p != '"') return nullptr;
    out = std::string_view(s, size_t(p - s));
    return p + 1;
}

// A key; the one-letter keys of Binance payloads skip the general path.
MT_SCAN_INLINE const char *key(const char *p, int &code) noexcept {
    unsigned char c = static_cast<unsigned char>(p[1]);
    if (p[2] == '"' && !kStop.t[c]) {
        code = c >= 'A' ? int(c) : KC_IGNORED;  // as key_code() for one byte
        return p + 3;
    }
    std::string_view k;
    if (!(p = str(p, k))) return nullptr;
    code = key_code(k);
    return p;
}

// A JSON integer of at most 18 digits without leading zeros; what follows is
// checked by the caller (a ',', '}' or ']' after optional whitespace), which
// also turns "1.5", "1e3" and "12x" into a bail.
constexpr int64_t kPow10[19] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
    10000000000, 100000000000, 1000000000000, 10000000000000, 100000000000000,
    1000000000000000, 10000000000000000, 100000000000000000, 1000000000000000000,
};

// The run of ASCII digits at p: its length (0 for none; counting stops at
// 19, which no caller accepts) and value.  Reads 16 bytes from p, which the
// padding after the frame covers; two eight-digit SWAR steps take Binance's
// 13-digit (ms) and 16-digit (µs) times and ids without a loop per digit.
MT_SCAN_INLINE int digits(const char *p, uint64_t &acc) noexcept {
    const uint64_t zeros = UINT64_C(0x3030303030303030);
    const uint64_t high = UINT64_C(0xF0F0F0F0F0F0F0F0), six = UINT64_C(0x0606060606060606);
    uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + 8, 8);
    // a digit's byte becomes 0..9, any other byte gets a high-nibble bit (a
    // carry of x + 6 only reaches bytes after the first non-digit)
    uint64_t xa = a ^ zeros, na = (xa | (xa + six)) & high;
    if (na) {
        int k = __builtin_ctzll(na) >> 3;
        acc = k ? mt_eight_digits((a << (8 * (8 - k))) | (zeros >> (8 * k))) : 0;
        return k;
    }
    uint64_t xb = b ^ zeros, nb = (xb | (xb + six)) & high;
    if (!nb) {
        acc = mt_eight_digits(a) * UINT64_C(100000000) + mt_eight_digits(b);
        int k = 16;
        while (k < 19 && unsigned(p[k] - '0') < 10u) acc = acc * 10 + unsigned(p[k++] - '0');
        return k;
    }
    int k = __builtin_ctzll(nb) >> 3;
    acc = mt_eight_digits(a);
    if (k) acc = acc * uint64_t(kPow10[k]) + mt_eight_digits((b << (8 * (8 - k))) | (zeros >> (8 * k)));
    return 8 + k;
}

// A JSON integer of at most 18 digits without leading zeros; what follows
// is checked by the caller (a ',', '}' or ']' after optional whitespace),
// which also turns "1.5", "1e3" and "12x" into a bail.
MT_SCAN_INLINE const char *integer(const char *p, int64_t &out) noexcept {
    bool neg = *p == '-';
    if (neg) ++p;
    uint64_t acc;
    int k = digits(p, acc);
    if (k <= 0 || k > 18 || (k > 1 && *p == '0')) return nullptr;
    out = neg ? -int64_t(acc) : int64_t(acc);
    return p + k;
}

// A decimal string's body "-?[0-9]+(.[0-9]+)?" of at most 18 digits, as
// mt_parse_fixed reads it (leading zeros allowed); returns the byte after the
// last digit (the caller checks it is the closing quote), or nullptr when the
// text is anything else (then mt_parse_fixed decides, from the string).
MT_SCAN_INLINE const char *decimal(const char *p, int64_t &m, int8_t &e) noexcept {
    bool neg = *p == '-';
    if (neg) ++p;
    uint64_t ia, fa;
    int ki = digits(p, ia), kf = 0;
    if (ki <= 0 || ki > 18) return nullptr;
    p += ki;
    if (*p == '.') {
        kf = digits(p + 1, fa);
        if (kf <= 0 || ki + kf > 18) return nullptr;
        ia = ia * uint64_t(kPow10[kf]) + fa;
        p += 1 + kf;
    }
    m = neg ? -int64_t(ia) : int64_t(ia);
    e = int8_t(-kf);
    return p;
}

// A level's "price" or "qty" string; p at the opening quote.
MT_SCAN_INLINE const char *level_value(const char *p, int64_t &m, int8_t &e) noexcept {
    const char *q = decimal(p + 1, m, e);
    if (q && *q == '"') return q + 1;
    // long or unusual: the general parser on the whole string
    std::string_view s;
    int ex;
    if (!(p = str(p, s)) || !mt_parse_fixed(s.data(), s.size(), &m, &ex)) return nullptr;
    e = int8_t(ex);
    return p;
}

// [["price","qty"], ...] straight into levels; p at '['.
inline const char *levels(const char *p, std::vector<Level> &out) noexcept {
    ++p;
    if (*p == ']') return p + 1;
    for (;;) {
        if (p[0] != '[' || p[1] != '"') return nullptr;
        Level L;
        if (!(p = level_value(p + 1, L.price, L.price_exp))) return nullptr;
        if (p[0] != ',' || p[1] != '"') return nullptr;
        if (!(p = level_value(p + 1, L.qty, L.qty_exp))) return nullptr;
        if (*p != ']') return nullptr;
        out.push_back(L);
        ++p;
        if (*p == ',') {
            ++p;
            continue;
        }
        if (*p == ']') return p + 1;
        return nullptr;
    }
}

inline const char *object(const char *p, Fields &f, Frame &fr, int depth) noexcept;

// One field's value, recorded as frame_walk.hpp's walk_object records it.
MT_SCAN_INLINE const char *value(const char *p, int c, Fields &f, Frame &fr, int depth) noexcept {
    switch (*p) {
    case '"': {
        std::string_view s;
        if (c != KC_IGNORED && (unsigned(p[1] - '0') < 10u || p[1] == '-')) {
            // most such strings are prices and quantities: convert them now,
            // while the bytes are at hand (get_dec then reads f.dm/f.de)
            const char *q = decimal(p + 1, f.dm[c], f.de[c]);
            if (q && *q == '"') {
                f.str[c] = std::string_view(p + 1, size_t(q - p - 1));
                Fields::set(f.has_str, c);
                Fields::set(f.has_dec, c);
                return q + 1;
            }
        }
        if (!(p = str(p, s))) return nullptr;
        if (c != KC_IGNORED) {
            f.str[c] = s;
            Fields::set(f.has_str, c);
            Fields::clear_bit(f.has_dec, c);  // a repeated key: the last value counts
        }
        return p;
    }
    case 't':
        if (std::memcmp(p, "true", 4) != 0) return nullptr;
        if (c != KC_IGNORED) {
            f.flag[c] = true;
            Fields::set(f.has_bool, c);
        }
        return p + 4;
    case 'f':
        if (std::memcmp(p, "false", 5) != 0) return nullptr;
        if (c != KC_IGNORED) {
            f.flag[c] = false;
            Fields::set(f.has_bool, c);
        }
        return p + 5;
    case 'n':
        if (std::memcmp(p, "null", 4) != 0) return nullptr;
        if (c != KC_IGNORED) Fields::set(f.has_null, c);
        return p + 4;
    case '[':
        // only a payload's depth levels; any other array is simdjson's
        if (depth != 0 || !(c == 'b' || c == KC_BIDS || c == 'a' || c == KC_ASKS)) return nullptr;
        Fields::set(f.has_other, c);
        Fields::set(f.has_arr, c);
        return levels(p, (c == 'b' || c == KC_BIDS) ? fr.bids : fr.asks);
    case '{': {
        if (depth != 0 || (c != 'k' && c != 'o')) return nullptr;
        Fields::set(f.has_other, c);
        int index;
        fr.new_sub(index);
        f.sub = index;
        return object(p, fr.subs[size_t(index)], fr, 1);
    }
    default: {
        int64_t x;
        if (!(p = integer(p, x))) return nullptr;
        if (c != KC_IGNORED) {
            f.num[c] = x;
            Fields::set(f.has_int, c);
        }
        return p;
    }
    }
}

// p at '{'; returns the byte after the matching '}'.
inline const char *object(const char *p, Fields &f, Frame &fr, int depth) noexcept {
    ++p;
    if (*p == '}') return p + 1;
    for (;;) {
        int c;
        if (*p != '"' || !(p = key(p, c))) return nullptr;
        if (*p != ':') return nullptr;
        ++p;
        if (c == KC_RESULT) return nullptr;  // acks keep raw JSON: simdjson's job
        if (!(p = value(p, c, f, fr, depth))) return nullptr;
        if (*p == ',') {
            ++p;
            continue;
        }
        if (*p == '}') return p + 1;
        return nullptr;
    }
}

}  // namespace scan

// Fill `fr` as parse_frame would and return ST_OK, or return SC_BAIL.
// buf[len] must be NUL.
inline int scan_frame(const char *buf, size_t len, Frame &fr) noexcept {
    fr.reset();
    const char *end = buf + len;
    const char *p = buf;
    if (*p != '{') return SC_BAIL;
    const char *q = p + 1;
    if (size_t(end - q) >= 8 && std::memcmp(q, "\"stream\"", 8) == 0) {
        // {"stream":"name","data":{...}} in that order; anything else bails
        // (also a "stream" that is not a string: simdjson judges it)
        std::string_view s;
        if (q[8] != ':' || q[9] != '"' || !(p = scan::str(q + 9, s))) return SC_BAIL;
        if (size_t(end - p) < 9 || std::memcmp(p, ",\"data\":{", 9) != 0) return SC_BAIL;
        fr.stream = s;
        fr.has_stream = true;
        if (!(p = scan::object(p + 8, fr.new_item(), fr, 0))) return SC_BAIL;
        if (*p != '}') return SC_BAIL;
        ++p;
    } else if (size_t(end - q) >= 6 && std::memcmp(q, "\"data\"", 6) == 0) {
        return SC_BAIL;  // an envelope with "data" first: rare, simdjson reads it
    } else {
        if (!(p = scan::object(p, fr.new_item(), fr, 0))) return SC_BAIL;
    }
    return p == end ? int(ST_OK) : SC_BAIL;
}

}  // namespace mt

#endif
