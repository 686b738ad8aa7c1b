// One pass of simdjson On-Demand over a Binance frame.
//
// The walker does not know event kinds: it records every field of the payload
// object(s) into a table indexed by key (Binance keys are single letters plus a
// handful of names), parses depth level arrays straight into scaled-int
// levels, and descends into the one nested object a kind may have (`k` of a
// kline, `o` of a forceOrder).  parser.pyx then picks the fields each kind
// needs.  String views point into the simdjson parser's buffers and are valid
// until the next frame is parsed.
#ifndef MELTICA_FRAME_HPP
#define MELTICA_FRAME_HPP

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "simdjson.h"
#include "fixed.h"

namespace mt {

enum Status : int {
    ST_OK = 0,
    ST_JSON = 1,      // not JSON, truncated, trailing garbage
    ST_MISSING = 2,   // a required field is absent
    ST_TYPE = 3,      // a field has the wrong JSON type
    ST_NUMBER = 4,    // not a plain decimal / int64, or overflow
    ST_SHAPE = 5,     // valid JSON, but not a shape Binance sends
    ST_NEGATIVE = 6,      // a value that must be >= 0 (quantity, id, ...) is not
    ST_NOT_POSITIVE = 7,  // a trade price is zero or negative
    ST_LEVEL_PRICE = 8,   // a depth level's price is zero or negative
    ST_LEVEL_QTY = 9,     // a depth level's quantity is negative
};

// Key codes for the multi-letter keys we read; single-letter keys use their
// ASCII code (all >= 'A').
enum KeyCode : int {
    KC_IGNORED = -1,
    KC_LAST_UPDATE_ID = 1,
    KC_BIDS = 2,
    KC_ASKS = 3,
    KC_STREAM = 4,
    KC_DATA = 5,
    KC_RESULT = 6,
    KC_ID = 7,
    KC_CODE = 8,
    KC_MSG = 9,
    KC_AP = 10,
    KC_PU = 11,
    KC_COUNT = 128,
};

inline int key_code(std::string_view k) noexcept {
    if (k.size() == 1) {
        unsigned char c = static_cast<unsigned char>(k[0]);
        return (c >= 'A' && c < 128) ? int(c) : KC_IGNORED;
    }
    switch (k.size()) {
    case 2:
        if (k == "id") return KC_ID;
        if (k == "ap") return KC_AP;
        if (k == "pu") return KC_PU;
        break;
    case 3:
        if (k == "msg") return KC_MSG;
        break;
    case 4:
        if (k == "bids") return KC_BIDS;
        if (k == "asks") return KC_ASKS;
        if (k == "data") return KC_DATA;
        if (k == "code") return KC_CODE;
        break;
    case 6:
        if (k == "stream") return KC_STREAM;
        if (k == "result") return KC_RESULT;
        break;
    case 12:
        if (k == "lastUpdateId") return KC_LAST_UPDATE_ID;
        break;
    }
    return KC_IGNORED;
}

using Level = mt_level;

// What one JSON object held, by key code.  Presence is tracked per JSON type so
// that "b" can be a price string (bookTicker), an order id (old trades) or a
// level array (depth) without confusion.
struct Fields {
    uint64_t has_str[2];
    uint64_t has_int[2];
    uint64_t has_bool[2];
    uint64_t has_other[2];   // present with another type (float, array, object, bad int)
    uint64_t has_null[2];    // present as null (optional fields: treated as absent)
    uint64_t has_dec[2];     // str[c] was converted already (the fast path): dm/de
    uint64_t has_arr[2];     // present as an array (depth levels must be one)
    std::string_view str[KC_COUNT];
    int64_t dm[KC_COUNT];
    int8_t de[KC_COUNT];
    int64_t num[KC_COUNT];
    bool flag[KC_COUNT];
    int sub;                 // index of the nested object in Frame::subs, or -1

    void clear() noexcept {
        std::memset(has_str, 0, sizeof(has_str));
        std::memset(has_int, 0, sizeof(has_int));
        std::memset(has_bool, 0, sizeof(has_bool));
        std::memset(has_other, 0, sizeof(has_other));
        std::memset(has_null, 0, sizeof(has_null));
        std::memset(has_dec, 0, sizeof(has_dec));
        std::memset(has_arr, 0, sizeof(has_arr));
        sub = -1;
    }
    static bool bit(const uint64_t *m, int c) noexcept { return (m[c >> 6] >> (c & 63)) & 1u; }
    static void set(uint64_t *m, int c) noexcept { m[c >> 6] |= uint64_t(1) << (c & 63); }
    static void clear_bit(uint64_t *m, int c) noexcept { m[c >> 6] &= ~(uint64_t(1) << (c & 63)); }
    bool present(int c) const noexcept {
        return bit(has_str, c) || bit(has_int, c) || bit(has_bool, c) || bit(has_other, c);
    }
    bool present_or_null(int c) const noexcept { return present(c) || bit(has_null, c); }
    bool is_array(int c) const noexcept { return bit(has_arr, c); }
};

struct Frame {
    std::vector<Fields> items;    // payload object(s): one, or many for `@arr` streams
    std::vector<Fields> subs;     // nested `k` / `o` objects, referenced by Fields::sub
    std::vector<Level> bids, asks;
    size_t n_items = 0, n_subs = 0;
    bool has_stream = false;
    bool data_is_array = false;
    std::string_view stream;
    int err_key = 0;              // key code behind the last error, for messages

    // Empty, before a frame is parsed (by either parser).
    void reset() noexcept {
        n_items = n_subs = 0;
        bids.clear();
        asks.clear();
        has_stream = data_is_array = false;
        stream = std::string_view();
        err_key = 0;
    }
    Fields &new_item() {
        if (n_items == items.size()) items.emplace_back();
        Fields &f = items[n_items++];
        f.clear();
        return f;
    }
    Fields &new_sub(int &index) {
        if (n_subs == subs.size()) subs.emplace_back();
        index = int(n_subs);
        Fields &f = subs[n_subs++];
        f.clear();
        return f;
    }
};

// Event type `e` -> the Kind value of events.pxd (keep the numbers in sync);
// 0 = unknown, -1 = serverShutdown.  `window` gets a ticker window index
// (1 24h, 2 mini, 3 1h, 4 4h, 5 1d), else 0.
enum EventTypeKind : int {
    ET_SHUTDOWN = -1, ET_UNKNOWN = 0, ET_TRADE = 1, ET_AGG_TRADE = 2, ET_BOOK_TICKER = 3,
    ET_BOOK_DELTA = 4, ET_KLINE = 6, ET_TICKER = 7, ET_MARK_PRICE = 8, ET_LIQUIDATION = 9,
};

inline int event_type_kind(std::string_view e, int &window) noexcept {
    window = 0;
    if (e == "trade") return ET_TRADE;
    if (e == "bookTicker") return ET_BOOK_TICKER;
    if (e == "depthUpdate") return ET_BOOK_DELTA;
    if (e == "aggTrade") return ET_AGG_TRADE;
    if (e == "kline") return ET_KLINE;
    if (e == "markPriceUpdate") return ET_MARK_PRICE;
    if (e == "forceOrder") return ET_LIQUIDATION;
    if (e == "24hrTicker") { window = 1; return ET_TICKER; }
    if (e == "24hrMiniTicker") { window = 2; return ET_TICKER; }
    if (e == "1hTicker") { window = 3; return ET_TICKER; }
    if (e == "4hTicker") { window = 4; return ET_TICKER; }
    if (e == "1dTicker") { window = 5; return ET_TICKER; }
    if (e == "serverShutdown") return ET_SHUTDOWN;
    return ET_UNKNOWN;
}

// A parser bound to one SIMD implementation (see frame_walk.hpp).
struct Engine {
    virtual ~Engine() = default;
    // Parse one frame; `buf` has SIMDJSON_PADDING readable bytes past `len`.
    virtual int parse(const char *buf, size_t len, size_t capacity, Frame &fr) noexcept = 0;
    virtual const char *name() const noexcept = 0;
};

// Field accessors with typed failures, used by parser.pyx per kind.

inline int get_str(const Fields &f, int c, std::string_view &out, int &err_key) noexcept {
    if (Fields::bit(f.has_str, c)) { out = f.str[c]; return ST_OK; }
    err_key = c;
    return f.present(c) ? ST_TYPE : ST_MISSING;
}

inline int get_int(const Fields &f, int c, int64_t &out, int &err_key) noexcept {
    if (Fields::bit(f.has_int, c)) { out = f.num[c]; return ST_OK; }
    err_key = c;
    if (Fields::bit(f.has_other, c)) {
        return Fields::bit(f.has_str, c) || Fields::bit(f.has_bool, c) ? ST_TYPE : ST_NUMBER;
    }
    return f.present(c) ? ST_TYPE : ST_MISSING;
}

// The raw JSON text kept for key c (an ack's "result").
inline std::string_view raw_json_of(const Fields &f, int c) noexcept { return f.str[c]; }

inline int opt_int(const Fields &f, int c, int64_t &out, int &err_key) noexcept {
    if (!f.present(c)) { out = MT_NA; return ST_OK; }
    return get_int(f, c, out, err_key);
}

inline int get_bool(const Fields &f, int c, bool &out, int &err_key) noexcept {
    if (Fields::bit(f.has_bool, c)) { out = f.flag[c]; return ST_OK; }
    err_key = c;
    return f.present(c) ? ST_TYPE : ST_MISSING;
}

inline int get_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key) noexcept {
    if (Fields::bit(f.has_dec, c)) {
        m = f.dm[c];
        e = f.de[c];
        return ST_OK;
    }
    std::string_view s;
    int st = get_str(f, c, s, err_key);
    if (st) return st;
    int ex;
    if (!mt_parse_fixed(s.data(), s.size(), &m, &ex)) { err_key = c; return ST_NUMBER; }
    e = int8_t(ex);
    return ST_OK;
}

inline int opt_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key) noexcept {
    if (!f.present(c)) { m = 0; e = MT_DEC_NA; return ST_OK; }
    return get_dec(f, c, m, e, err_key);
}

// Value checks.  Both parsers (frame_scan.hpp and frame_walk.hpp) fill the
// same Fields and levels, and every value reaches parser.pyx through these
// accessors, so both reject exactly the same frames.  Mantissas are compared:
// "-0.0" is zero, not negative.

inline int nonneg_int(const Fields &f, int c, int64_t &out, int &err_key) noexcept {
    int st = get_int(f, c, out, err_key);
    if (st == ST_OK && out < 0) { err_key = c; return ST_NEGATIVE; }
    return st;
}

inline int nonneg_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key) noexcept {
    int st = get_dec(f, c, m, e, err_key);
    if (st == ST_OK && m < 0) { err_key = c; return ST_NEGATIVE; }
    return st;
}

inline int opt_nonneg_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key) noexcept {
    int st = opt_dec(f, c, m, e, err_key);
    if (st == ST_OK && e != MT_DEC_NA && m < 0) { err_key = c; return ST_NEGATIVE; }
    return st;
}

inline int positive_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key) noexcept {
    int st = get_dec(f, c, m, e, err_key);
    if (st == ST_OK && m <= 0) { err_key = c; return ST_NOT_POSITIVE; }
    return st;
}

// Depth levels: a price is > 0 (no order rests at zero, so even a removal
// there names a level that cannot exist); a quantity is >= 0 (0 removes the
// level).  `c` names the level list for the error message.
inline int check_levels(const std::vector<Level> &levels, int c, int &err_key) noexcept {
    for (const Level &L : levels) {
        if (L.price <= 0) { err_key = c; return ST_LEVEL_PRICE; }
        if (L.qty < 0) { err_key = c; return ST_LEVEL_QTY; }
    }
    return ST_OK;
}

}  // namespace mt

// The walk on the builtin kernel, in a namespace named after it (walk_haswell,
// walk_fallback), so that two modules built for different kernels never
// define the same symbols.
#define MT_CAT2(a, b) a##_##b
#define MT_CAT(a, b) MT_CAT2(a, b)
#define MT_IMPL MT_CAT(walk, SIMDJSON_BUILTIN_IMPLEMENTATION)
#define MT_SIMD builtin
#define MT_IMPL_NAME SIMDJSON_STRINGIFY(SIMDJSON_BUILTIN_IMPLEMENTATION)
#include "frame_walk.hpp"
#undef MT_SIMD

namespace mt {

// A walker on the kernel this translation unit was compiled for (the
// "builtin" one); the caller owns it.  nullptr when out of memory.
inline Engine *new_engine(size_t max_capacity) noexcept {
    try {
        return new MT_IMPL::EngineImpl(max_capacity);
    } catch (...) {
        return nullptr;
    }
}
typedef Engine *(*EngineFactory)(size_t max_capacity) noexcept;

// The builtin kernel's name ("haswell", "fallback", ...).
inline const char *builtin_kernel() noexcept { return MT_IMPL_NAME; }

// On-Demand binds to one SIMD kernel at compile time, so setup.py compiles
// the walk twice on x86-64: into the parser with no ISA flags (simdjson's
// "fallback" kernel, any x86-64) and into meltica._core._walk_haswell with
// the flags below; parser.pyx picks one at import.  True when this CPU (and
// its OS, for the AVX state) runs code built with -mavx2 -mbmi -mpclmul
// -mlzcnt -mpopcnt.  Compiled without those flags itself.
inline bool cpu_runs_haswell() noexcept {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") &&
           __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("lzcnt") &&
           __builtin_cpu_supports("popcnt");
#else
    return false;
#endif
}

}  // namespace mt

#undef MT_IMPL
#undef MT_IMPL_NAME

#endif
