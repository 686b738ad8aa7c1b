// The v1 wire JSON (docs/wire-format.md) in C++: the byte buffer the encoder
// writes events into, and the document reader the decoder builds events from.
//
// WireBuf writes exactly what `json.JSONEncoder(separators=(",", ":"),
// ensure_ascii=False)` writes for the same values: strings keep non-ASCII
// characters as UTF-8 and escape only '"', '\\' and control characters (the
// short forms \b \f \n \r \t, else \u00xx in lower-case hex).
//
// WireReader parses one document with simdjson's DOM parser (which validates
// the whole text, values we skip included) and records the fields wire.pyx
// reads into a table indexed by field id.  It accepts only the canonical form
// (each known key once, ints as JSON integers, decimals as strings, levels as
// [price, qty] string pairs); anything else is reported as WR_OTHER and
// wire.pyx hands the text to the dict-based reference decoder, which either
// accepts it or raises WireError with a message naming the field.
#ifndef MELTICA_WIRE_HPP
#define MELTICA_WIRE_HPP

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "simdjson.h"
#include "fixed.h"

namespace mt {

// ---------------------------------------------------------------- writing

// A growable byte buffer.  Every put grows it as needed (throwing
// std::bad_alloc, which Cython turns into MemoryError).
struct WireBuf {
    char *p = nullptr;
    size_t len = 0;
    size_t cap = 0;

    WireBuf() = default;
    WireBuf(const WireBuf &) = delete;
    WireBuf &operator=(const WireBuf &) = delete;
    ~WireBuf() { std::free(p); }

    void grow(size_t need) {
        size_t c = cap ? cap : 4096;
        while (c - len < need) c *= 2;
        char *q = static_cast<char *>(std::realloc(p, c));
        if (!q) throw std::bad_alloc();
        p = q;
        cap = c;
    }
    inline void reserve(size_t n) {
        if (cap - len < n) grow(n);
    }
    // Empty it; a buffer grown past `keep` bytes gives the memory back, so a
    // huge batch does not pin its size for the life of the process.
    void clear(size_t keep) noexcept {
        len = 0;
        if (cap > keep) {
            std::free(p);
            p = nullptr;
            cap = 0;
        }
    }

    inline void put(const char *s, size_t n) {
        reserve(n);
        std::memcpy(p + len, s, n);
        len += n;
    }
    inline void put_char(char c) {
        reserve(1);
        p[len++] = c;
    }
    // The eight decimal digits of v < 10^8 as byte values 0..9, first digit in
    // the lowest byte: both halves of v at once, then both quarters (SWAR, no
    // chain of eight divisions).
    static inline uint64_t eight_digits(uint32_t v) noexcept {
        uint64_t x = uint64_t(v / 10000) | (uint64_t(v % 10000) << 32);
        // each 32-bit lane (< 10000) divided by 100: x * 10486 >> 20 is exact there
        uint64_t hi = ((x * 10486) >> 20) & UINT64_C(0x0000007F0000007F);
        x = hi | ((x - hi * 100) << 16);
        // each 16-bit lane (< 100) divided by 10: x * 103 >> 10 is exact there
        hi = ((x * 103) >> 10) & UINT64_C(0x000F000F000F000F);
        return hi | ((x - hi * 10) << 8);
    }
    // The decimal digits of u written to end[-n..0); returns n.  Writes whole
    // 8-byte chunks (fixed-size copies, no libc call), so up to 24 bytes
    // before `end` may be touched: callers pass a 24-byte scratch.
    static inline size_t digits(uint64_t u, char *end) noexcept {
        char *q = end;
        uint64_t z;
        while (u >= 100000000) {
            z = eight_digits(uint32_t(u % 100000000)) + UINT64_C(0x3030303030303030);
            u /= 100000000;
            q -= 8;
            std::memcpy(q, &z, 8);
        }
        z = eight_digits(uint32_t(u));
        // leading zero digits are the low zero bytes; keep one digit for u == 0
        size_t lead = z ? size_t(__builtin_ctzll(z)) / 8 : 7;
        z += UINT64_C(0x3030303030303030);
        std::memcpy(q - 8, &z, 8);
        return size_t(end - q) + 8 - lead;
    }
    inline void put_i64(int64_t v) {
        char tmp[48];
        uint64_t u = v < 0 ? uint64_t(0) - uint64_t(v) : uint64_t(v);
        size_t n = digits(u, tmp + 24);
        reserve(25 + 24);
        if (v < 0) p[len++] = '-';
        std::memcpy(p + len, tmp + 24 - n, 24);  // fixed size; only n bytes count
        len += n;
    }
    // A decimal as a JSON string, or null when absent (e == MT_DEC_NA): the
    // text mt_format_fixed (fixed.h) gives, written without its digit loop.
    inline void put_fixed(int64_t m, int e) {
        reserve(FIXED_MAX);
        put_fixed_reserved(m, e);
    }
    // Depth levels as [["price","qty"],...]: one reserve per level.
    // Levels of common decimals (fixed16) are written through a local pointer.
    void put_levels(const mt_level *lv, size_t n) {
        put_char('[');
        for (size_t i = 0; i < n; ++i) {
            reserve(2 * FIXED_MAX + 4);
            const mt_level &L = lv[i];
            char *q = p + len;
            *q = ',';
            q += i != 0;
            *q++ = '[';
            if (fixed16_ok(L.price, L.price_exp) && fixed16_ok(L.qty, L.qty_exp)) {
                q = fixed16(q, magnitude(L.price), size_t(-L.price_exp), L.price < 0);
                *q++ = ',';
                q = fixed16(q, magnitude(L.qty), size_t(-L.qty_exp), L.qty < 0);
                *q++ = ']';
                len = size_t(q - p);
                continue;
            }
            len = size_t(q - p);
            put_fixed_reserved(L.price, L.price_exp);
            p[len++] = ',';
            put_fixed_reserved(L.qty, L.qty_exp);
            p[len++] = ']';
        }
        put_char(']');
    }
    static inline uint64_t magnitude(int64_t m) noexcept {
        return m < 0 ? uint64_t(0) - uint64_t(m) : uint64_t(m);
    }
    // Whether fixed16 writes (m, e): a present decimal of at most 16 digits
    // and 0..16 fraction digits (MT_DEC_NA is positive, so excluded).
    static inline bool fixed16_ok(int64_t m, int e) noexcept {
        return e <= 0 && e >= -16 && magnitude(m) < UINT64_C(10000000000000000);
    }
    // Most bytes put_fixed writes: quotes, sign, 20 digits, "0." and 128
    // fraction digits (int8 exponent), or 127 zeros for a positive exponent.
    // (plus slack for the fixed-size copies of put_fixed_reserved)
    static constexpr size_t FIXED_MAX = 2 + 1 + 20 + 2 + 128 + 24;
    __attribute__((always_inline)) inline void put_fixed_reserved(int64_t m, int e) {
        if (e == MT_DEC_NA) {
            std::memcpy(p + len, "null", 4);
            len += 4;
            return;
        }
        if (fixed16_ok(m, e)) {
            put_fixed16(magnitude(m), size_t(-e), m < 0);
            return;
        }
        put_fixed_other(m, e);
    }
    // put_fixed_reserved for any other decimal (longer or with a positive
    // exponent), out of line to keep the callers' inlined fast path small.
    __attribute__((noinline)) void put_fixed_other(int64_t m, int e) {
        uint64_t u = m < 0 ? uint64_t(0) - uint64_t(m) : uint64_t(m);
        char tmp[48];
        size_t nd = digits(u, tmp + 24);
        const char *d = tmp + 24 - nd;
        size_t frac = size_t(e < 0 ? -e : 0), zeros = size_t(e > 0 ? e : 0);
        // fixed-size copies (the reserve covers them); only the counted bytes stay
        p[len++] = '"';
        if (m < 0) p[len++] = '-';
        if (nd <= frac) {
            p[len++] = '0';
            p[len++] = '.';
            std::memset(p + len, '0', 128);
            len += frac - nd;
            std::memcpy(p + len, d, 24);
            len += nd;
        } else {
            std::memcpy(p + len, d, 24);
            len += nd - frac;
            if (frac) {
                p[len++] = '.';
                std::memcpy(p + len, d + nd - frac, 24);
                len += frac;
            }
        }
        if (zeros) {  // positive exponents (not produced by parsing): exact, as fixed.h
            std::memset(p + len, '0', zeros);
            len += zeros;
        }
        p[len++] = '"';
    }
#if defined(__SSE2__)
    // The eight decimal digits of v < 10^8 as 16-bit lanes 0..9, first digit
    // in lane 0 (SSE2: v divmod 10^4, then each half divided by 10^3, 10^2,
    // 10, 1 at once with multiply-high reciprocals, minus ten times the
    // quotient one place to the left).
    static inline __m128i digits8_sse2(uint32_t v) noexcept {
        const __m128i div10000 = _mm_set1_epi32(int(0xd1b71759));
        const __m128i k10000 = _mm_set1_epi32(10000);
        const __m128i divpow = _mm_setr_epi16(8389, 5243, 13108, int16_t(0x8000),
                                              8389, 5243, 13108, int16_t(0x8000));
        const __m128i shiftpow = _mm_setr_epi16(1 << 7, 1 << 11, 1 << 13, int16_t(0x8000),
                                                1 << 7, 1 << 11, 1 << 13, int16_t(0x8000));
        __m128i x = _mm_cvtsi32_si128(int(v));
        __m128i abcd = _mm_srli_epi64(_mm_mul_epu32(x, div10000), 45);
        __m128i efgh = _mm_sub_epi32(x, _mm_mul_epu32(abcd, k10000));
        __m128i v1 = _mm_slli_epi64(_mm_unpacklo_epi16(abcd, efgh), 2);
        __m128i v2 = _mm_unpacklo_epi16(v1, v1);
        v2 = _mm_unpacklo_epi32(v2, v2);
        __m128i q = _mm_mulhi_epu16(_mm_mulhi_epu16(v2, divpow), shiftpow);
        return _mm_sub_epi16(q, _mm_slli_epi64(_mm_mullo_epi16(q, _mm_set1_epi16(10)), 16));
    }
#endif
    // The common decimal (u < 10^16, 0..16 fraction digits) without loops: u
    // as 16 zero-padded digits after 8 '0's.  The fraction is then the last
    // `frac` of them whatever u's length (the padding supplies the zeros
    // after "0."), and the integer part the max(nd - frac, 1) digits before
    // it (a lone '0' when nd <= frac).  Needs 40 reserved bytes.
    inline void put_fixed16(uint64_t u, size_t frac, bool neg) {
        len = size_t(fixed16(p + len, u, frac, neg) - p);
    }
    // put_fixed16 at q; returns the end.  A static on a local pointer: stores
    // through char * may alias the members, which would otherwise be
    // reloaded after every byte.
    static inline char *fixed16(char *q, uint64_t u, size_t frac, bool neg) noexcept {
        char d[40];  // 24 digits; the fixed-size copies below read up to 16 past them
        const uint64_t zero = UINT64_C(0x3030303030303030);
        size_t nd;
        std::memcpy(d, &zero, 8);
#if defined(__SSE2__)
        __m128i dg = _mm_packus_epi16(digits8_sse2(uint32_t(u / 100000000)),
                                      digits8_sse2(uint32_t(u % 100000000)));
        // leading zero digits = trailing set bits of the zero-byte mask
        unsigned zm = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(dg, _mm_setzero_si128())));
        nd = 16 - size_t(__builtin_ctz(~zm));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(d + 8),
                         _mm_add_epi8(dg, _mm_set1_epi8('0')));
#else
        uint64_t hi = eight_digits(uint32_t(u / 100000000));
        uint64_t lo = eight_digits(uint32_t(u % 100000000));
        nd = hi ? 16 - size_t(__builtin_ctzll(hi)) / 8
                : (lo ? 8 - size_t(__builtin_ctzll(lo)) / 8 : 0);
        hi += zero;
        lo += zero;
        std::memcpy(d + 8, &hi, 8);
        std::memcpy(d + 16, &lo, 8);
#endif
        size_t k = nd > frac ? nd - frac : 1;
        q[0] = '"';
        q[1] = '-';  // overwritten by the first digit unless neg
        q += 1 + neg;
        std::memcpy(q, d + 24 - frac - k, 16);  // fixed size; k <= 16 bytes count
        q += k;
        if (frac) {
            *q++ = '.';
            std::memcpy(q, d + 24 - frac, 16);
            q += frac;
        }
        *q++ = '"';
        return q;
    }
    // UTF-8 text s[0..n) JSON-escaped, without quotes (the inside of a string).
    void put_escaped(const char *s, size_t n) {
        static const char hex[] = "0123456789abcdef";
        size_t run = 0;
        for (size_t i = 0; i < n; ++i) {
            unsigned char c = static_cast<unsigned char>(s[i]);
            if (c >= 0x20 && c != '"' && c != '\\') continue;
            put(s + run, i - run);
            run = i + 1;
            reserve(6);
            p[len++] = '\\';
            switch (c) {
                case '"': p[len++] = '"'; break;
                case '\\': p[len++] = '\\'; break;
                case '\b': p[len++] = 'b'; break;
                case '\f': p[len++] = 'f'; break;
                case '\n': p[len++] = 'n'; break;
                case '\r': p[len++] = 'r'; break;
                case '\t': p[len++] = 't'; break;
                default:
                    p[len++] = 'u'; p[len++] = '0'; p[len++] = '0';
                    p[len++] = hex[c >> 4]; p[len++] = hex[c & 15];
            }
        }
        put(s + run, n - run);
    }
    inline void put_str(const char *s, size_t n) {
        reserve(n + 2);
        p[len++] = '"';
        put_escaped(s, n);
        put_char('"');
    }
};

// ---------------------------------------------------------------- reading

// Field ids of every key a v1 event can have (the union over kinds).
#define MT_WIRE_FIELDS(X) \
    X(V, "v") X(VENUE, "venue") X(MARKET, "market") X(SYMBOL, "symbol") X(KIND, "kind") \
    X(SEQ, "seq") X(TS_EVENT, "ts_event") X(TS_TRANSACTION, "ts_transaction") \
    X(TS_RECV, "ts_recv") X(TRACE, "trace") \
    X(TRADE_ID, "trade_id") X(FIRST_TRADE_ID, "first_trade_id") \
    X(LAST_TRADE_ID, "last_trade_id") X(PRICE, "price") X(QTY, "qty") X(SIDE, "side") \
    X(UPDATE_ID, "update_id") X(BID_PRICE, "bid_price") X(BID_QTY, "bid_qty") \
    X(ASK_PRICE, "ask_price") X(ASK_QTY, "ask_qty") \
    X(FIRST_UPDATE_ID, "first_update_id") X(PREV_UPDATE_ID, "prev_update_id") \
    X(BIDS, "bids") X(ASKS, "asks") X(SOURCE, "source") \
    X(VERIFIED_BIDS, "verified_bids") X(VERIFIED_ASKS, "verified_asks") \
    X(INTERVAL, "interval") X(OPEN_TIME, "open_time") X(CLOSE_TIME, "close_time") \
    X(OPEN, "open") X(HIGH, "high") X(LOW, "low") X(CLOSE, "close") X(VOLUME, "volume") \
    X(QUOTE_VOLUME, "quote_volume") X(TAKER_BUY_VOLUME, "taker_buy_volume") \
    X(TAKER_BUY_QUOTE_VOLUME, "taker_buy_quote_volume") X(TRADES, "trades") \
    X(CLOSED, "closed") \
    X(WINDOW, "window") X(LAST_PRICE, "last_price") X(PRICE_CHANGE, "price_change") \
    X(PRICE_CHANGE_PCT, "price_change_pct") X(WEIGHTED_AVG_PRICE, "weighted_avg_price") \
    X(PREV_CLOSE, "prev_close") X(LAST_QTY, "last_qty") \
    X(MARK_PRICE, "mark_price") X(INDEX_PRICE, "index_price") \
    X(SETTLE_PRICE, "settle_price") X(FUNDING_RATE, "funding_rate") \
    X(NEXT_FUNDING_TIME, "next_funding_time") \
    X(ORDER_TYPE, "order_type") X(TIME_IN_FORCE, "time_in_force") X(STATUS, "status") \
    X(AVG_PRICE, "avg_price") X(LAST_FILLED_QTY, "last_filled_qty") \
    X(FILLED_QTY, "filled_qty") \
    X(REASON, "reason") X(FROM_SEQ, "from_seq") X(TO_SEQ, "to_seq") X(STALE, "stale") \
    X(STATE, "state") X(CONNECTION, "connection") \
    X(NAME, "name") X(VALUES, "values")

#define MT_WIRE_ENUM(id, text) WF_##id,
enum WireField : int { MT_WIRE_FIELDS(MT_WIRE_ENUM) WF_COUNT };
#undef MT_WIRE_ENUM

// What a field held.
enum WireTag : uint8_t {
    WT_ABSENT = 0,
    WT_NULL,
    WT_INT,      // an int64 (JSON integer)
    WT_STR,      // a string (unescaped, UTF-8)
    WT_TRUE,
    WT_FALSE,
    WT_LEVELS,   // bids / asks: [[price, qty], ...] of decimal strings
    WT_VALUES,   // values: {name: string, ...}
    WT_OTHER,    // anything else (float, big int, array, object)
};

struct WireSlot {
    uint8_t tag;
    int64_t i;
    std::string_view s;
};

enum WireRead : int {
    WR_OK = 0,
    WR_OTHER = 1,  // not JSON, or not the canonical form: ask the reference decoder
};

// A JSON string -> (m, e) decimal; false unless a plain exact int64 decimal.
inline bool wire_decimal(simdjson::dom::element x, int64_t &m, int8_t &e) noexcept {
    std::string_view s;
    int ex;
    if (x.get_string().get(s) || !mt_parse_fixed(s.data(), s.size(), &m, &ex)) return false;
    e = int8_t(ex);
    return true;
}

// The field id of a key, or -1.  A 128-entry open-addressing table built once.
class WireKeys {
  public:
    WireKeys() noexcept {
        for (auto &k : table_) k = -1;
#define MT_WIRE_NAME(id, text) names_[WF_##id] = std::string_view(text);
        MT_WIRE_FIELDS(MT_WIRE_NAME)
#undef MT_WIRE_NAME
        for (int f = 0; f < WF_COUNT; ++f) {
            size_t h = hash(names_[f]);
            while (table_[h] >= 0) h = (h + 1) & 127;
            table_[h] = int8_t(f);
        }
    }
    inline int find(std::string_view k) const noexcept {
        size_t h = hash(k);
        while (table_[h] >= 0) {
            if (names_[table_[h]] == k) return table_[h];
            h = (h + 1) & 127;
        }
        return -1;
    }

  private:
    static inline size_t hash(std::string_view k) noexcept {
        // length and the first, middle and last bytes tell the 66 names apart well
        if (k.empty()) return 0;
        size_t n = k.size();
        uint32_t x = uint32_t(n) * 31u + uint8_t(k[0]) * 7u + uint8_t(k[n / 2]) * 131u +
                     uint8_t(k[n - 1]) * 1031u;
        return (x ^ (x >> 7)) & 127;
    }
    int8_t table_[128];
    std::string_view names_[WF_COUNT];
};

// Reads wire documents.  Views (slot strings, values) point into the parser's
// buffers and stay valid until the next read.
class WireReader {
  public:
    WireSlot slot[WF_COUNT];
    std::vector<mt_level> bids, asks;
    std::vector<std::pair<std::string_view, std::string_view>> values;

    // A copy of data[0..n) followed by simdjson's padding; returns it.
    const char *load(const char *data, size_t n) {
        buf_.resize(n + simdjson::SIMDJSON_PADDING);
        if (n) std::memcpy(buf_.data(), data, n);
        return buf_.data();
    }
    // Give back the copy and the parser's memory after a large input.
    void shrink(size_t keep) {
        if (buf_.capacity() > keep) std::vector<char>().swap(buf_);
        // a failed allocate leaves the parser empty; the next parse allocates again
        if (parser_.capacity() > keep) (void)!parser_.allocate(keep);
    }

    // Parse p[0..n), which must have SIMDJSON_PADDING readable bytes past n
    // (a slice of load()'s copy), and record its fields (keys unescaped).
    // Throws std::bad_alloc only.
    int read(const char *p, size_t n) {
        namespace dom = simdjson::dom;
        for (auto &s : slot) s.tag = WT_ABSENT;
        bids.clear();
        asks.clear();
        values.clear();
        dom::element root;
        dom::object obj;
        if (parser_.parse(p, n, false).get(root) || root.get_object().get(obj)) return WR_OTHER;
        for (dom::key_value_pair kv : obj) {
            int f = keys_.find(kv.key);
            if (f < 0) continue;  // unknown keys are ignored, as by the reference
            WireSlot &s = slot[f];
            if (s.tag != WT_ABSENT) return WR_OTHER;  // a repeated key
            s.tag = WT_OTHER;
            dom::element v = kv.value;
            switch (v.type()) {
                case dom::element_type::INT64:
                    if (!v.get_int64().get(s.i)) s.tag = WT_INT;
                    break;
                case dom::element_type::STRING:
                    if (!v.get_string().get(s.s)) s.tag = WT_STR;
                    break;
                case dom::element_type::BOOL: {
                    bool b = false;
                    if (!v.get_bool().get(b)) s.tag = b ? WT_TRUE : WT_FALSE;
                    break;
                }
                case dom::element_type::NULL_VALUE: s.tag = WT_NULL; break;
                case dom::element_type::ARRAY:
                    if (f == WF_BIDS || f == WF_ASKS) {
                        if (!read_levels(v, f == WF_BIDS ? bids : asks)) return WR_OTHER;
                        s.tag = WT_LEVELS;
                    }
                    break;
                case dom::element_type::OBJECT:
                    if (f == WF_VALUES) {
                        if (!read_values(v)) return WR_OTHER;
                        s.tag = WT_VALUES;
                    }
                    break;
                default: break;  // doubles, uint64 beyond int64
            }
        }
        return WR_OK;
    }

  private:
    static bool read_levels(simdjson::dom::element v, std::vector<mt_level> &out) {
        simdjson::dom::array rows;
        if (v.get_array().get(rows)) return false;
        for (simdjson::dom::element row : rows) {
            simdjson::dom::array pair;
            if (row.get_array().get(pair) || pair.size() != 2) return false;
            auto it = pair.begin();
            mt_level L;
            if (!wire_decimal(*it, L.price, L.price_exp)) return false;
            ++it;
            if (!wire_decimal(*it, L.qty, L.qty_exp)) return false;
            out.push_back(L);
        }
        return true;
    }
    bool read_values(simdjson::dom::element v) {
        simdjson::dom::object obj;
        if (v.get_object().get(obj)) return false;
        for (simdjson::dom::key_value_pair kv : obj) {
            std::string_view s;
            if (kv.value.get_string().get(s)) return false;
            values.emplace_back(kv.key, s);
        }
        return true;
    }

    simdjson::dom::parser parser_;
    WireKeys keys_;
    std::vector<char> buf_;
};

// "-?digits(.digits)?" of any length: a derived value's decimal text.
inline bool wire_plain_decimal(std::string_view s) noexcept {
    size_t i = 0, n = s.size(), start;
    if (n && s[0] == '-') i = 1;
    start = i;
    while (i < n && unsigned(s[i] - '0') < 10u) ++i;
    if (i == start) return false;
    if (i == n) return true;
    if (s[i] != '.') return false;
    start = ++i;
    while (i < n && unsigned(s[i] - '0') < 10u) ++i;
    return i == n && i > start;
}

}  // namespace mt

#endif
