// The simdjson On-Demand walk, compiled once per SIMD implementation.
//
// Included by frame.hpp with MT_IMPL (our namespace) and MT_SIMD (simdjson's
// implementation namespace) defined; no include guard, so that a build could
// instantiate it for more than one kernel.  simdjson's amalgamated header
// only carries On-Demand for the compile-time ("builtin") kernel, so each
// kernel is its own translation unit with its own compiler flags: setup.py
// builds the parser (fallback) and meltica._core._walk_haswell (AVX2), and
// parser.pyx picks one at import.

namespace mt {
namespace MT_IMPL {

namespace od = simdjson::MT_SIMD::ondemand;

inline int parse_levels(od::value v, std::vector<Level> &out, int &err_key, int code) noexcept {
    od::array arr;
    if (v.get_array().get(arr)) return ST_JSON;
    for (auto lvl_r : arr) {
        od::array lvl;
        if (std::move(lvl_r).get_array().get(lvl)) return ST_TYPE;
        Level L;
        int n = 0;
        for (auto x_r : lvl) {
            od::value x;
            if (std::move(x_r).get(x)) return ST_JSON;
            // raw token, as in walk_object: decimals never need unescaping (an
            // escape makes them fail as numbers)
            std::string_view tok = x.raw_json_token();
            if (tok.empty()) return ST_JSON;
            if (tok[0] != '"') { err_key = code; return ST_TYPE; }
            const char *q = tok.data() + tok.size() - 1;
            while (q > tok.data() && *q != '"') --q;
            if (q == tok.data()) return ST_JSON;
            std::string_view s(tok.data() + 1, size_t(q - tok.data() - 1));
            int64_t m;
            int e;
            if (n >= 2 || !mt_parse_fixed(s.data(), s.size(), &m, &e)) {
                err_key = code;
                return n >= 2 ? ST_SHAPE : ST_NUMBER;
            }
            if (n == 0) { L.price = m; L.price_exp = int8_t(e); }
            else { L.qty = m; L.qty_exp = int8_t(e); }
            ++n;
        }
        if (n != 2) { err_key = code; return ST_SHAPE; }
        out.push_back(L);
    }
    return ST_OK;
}

// A JSON integer token (leading '-' allowed) into int64; false for floats,
// exponents and overflow.  The token may carry trailing whitespace.
inline bool token_int64(std::string_view tok, int64_t &out) noexcept {
    const char *p = tok.data(), *end = p + tok.size();
    bool neg = false;
    if (p < end && *p == '-') { neg = true; ++p; }
    const char *digits = p;
    uint64_t acc = 0;
    p = mt_scan_digits(p, end, &acc);
    size_t nd = size_t(p - digits);
    if (nd == 0) return false;
    if (nd > 18) {
        // only here can int64 overflow: redo the digits with a check
        if (!mt_accumulate(digits, p, p, p, &acc)) return false;
    }
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) ++p;
    if (p != end) return false;  // '.', 'e': not an integer
    out = neg ? -int64_t(acc) : int64_t(acc);
    return true;
}

// Record the fields of one object.  `depth` 0 is a payload, 1 a nested object.
// Scalars are read from the raw token (On-Demand has validated the structure
// in stage 1), which avoids copying strings and re-scanning numbers; a string
// with escapes goes through simdjson's unescaping.
inline int walk_object(od::object obj, Fields &f, Frame &fr, int depth) noexcept {
    for (auto field_r : obj) {
        od::field field;
        if (std::move(field_r).get(field)) return ST_JSON;
        int c = key_code(field.escaped_key());
        if (c == KC_IGNORED) continue;  // on-demand skips the value when we move on
        od::value v = field.value();
        if (c == KC_RESULT) {
            // an ack's result may be anything (null, list, bool): keep its JSON
            std::string_view raw;
            if (v.raw_json().get(raw)) return ST_JSON;
            f.str[c] = raw;
            Fields::set(f.has_other, c);
            continue;
        }
        std::string_view tok = v.raw_json_token();
        if (tok.empty()) return ST_JSON;
        switch (tok[0]) {
        case '"': {
            // The token ends at the next structural character, so the closing
            // quote is found by stepping back over trailing whitespace.  The
            // view keeps escapes as sent: decimals reject them (NumberError)
            // and text fields check for them where they become Python str.
            const char *q = tok.data() + tok.size() - 1;
            while (q > tok.data() && *q != '"') --q;
            if (q == tok.data()) return ST_JSON;
            f.str[c] = std::string_view(tok.data() + 1, size_t(q - tok.data() - 1));
            Fields::set(f.has_str, c);
            break;
        }
        case 't':
        case 'f': {
            bool b;
            if (v.get_bool().get(b)) return ST_JSON;
            f.flag[c] = b;
            Fields::set(f.has_bool, c);
            break;
        }
        case 'n': {
            // is_null() gives a result that must be unwrapped with get(): its
            // implicit bool conversion would throw (and abort, noexcept) on "nul"
            bool null_ok = false;
            if (v.is_null().get(null_ok) || !null_ok) return ST_JSON;
            Fields::set(f.has_null, c);
            break;
        }
        case '[': {
            Fields::set(f.has_other, c);
            Fields::set(f.has_arr, c);
            if (depth == 0 && (c == 'b' || c == KC_BIDS || c == 'a' || c == KC_ASKS)) {
                int st = parse_levels(v, (c == 'b' || c == KC_BIDS) ? fr.bids : fr.asks, fr.err_key, c);
                if (st) return st;
            }
            break;
        }
        case '{': {
            Fields::set(f.has_other, c);
            if (depth == 0 && (c == 'k' || c == 'o')) {
                od::object sub;
                if (v.get_object().get(sub)) return ST_JSON;
                int index;
                fr.new_sub(index);
                f.sub = index;
                // new_sub may have moved the vector: look the element up again
                int st = walk_object(sub, fr.subs[size_t(index)], fr, 1);
                if (st) return st;
            }
            break;
        }
        default: {
            int64_t x;
            if (token_int64(tok, x)) {
                f.num[c] = x;
                Fields::set(f.has_int, c);
            } else if (tok[0] == '-' || unsigned(tok[0] - '0') < 10u) {
                // floats, exponents, big integers: never silently narrowed
                Fields::set(f.has_other, c);
            } else {
                return ST_JSON;
            }
            break;
        }
        }
    }
    return ST_OK;
}

// Combined envelope: {"stream": "...", "data": {...} | [...]}.  The stream is
// read first whatever the field order, so the payload can be typed by it.
inline int walk_envelope(od::object obj, Frame &fr) noexcept {
    for (auto field_r : obj) {
        od::field field;
        if (std::move(field_r).get(field)) return ST_JSON;
        int c = key_code(field.escaped_key());
        od::value v = field.value();
        if (c == KC_STREAM) {
            // raw token, as in walk_object: stream names carry no escapes
            std::string_view tok = v.raw_json_token();
            const char *q = tok.data() + tok.size() - 1;
            while (q > tok.data() && *q != '"') --q;
            if (tok.empty() || tok[0] != '"' || q == tok.data()) { fr.err_key = c; return ST_TYPE; }
            fr.stream = std::string_view(tok.data() + 1, size_t(q - tok.data() - 1));
            fr.has_stream = true;
        } else if (c == KC_DATA) {
            od::json_type t;
            if (v.type().get(t)) return ST_JSON;
            if (t == od::json_type::object) {
                od::object d;
                if (v.get_object().get(d)) return ST_JSON;
                int st = walk_object(d, fr.new_item(), fr, 0);
                if (st) return st;
            } else if (t == od::json_type::array) {
                fr.data_is_array = true;
                od::array arr;
                if (v.get_array().get(arr)) return ST_JSON;
                for (auto el_r : arr) {
                    od::object d;
                    if (std::move(el_r).get_object().get(d)) { fr.err_key = c; return ST_TYPE; }
                    int st = walk_object(d, fr.new_item(), fr, 0);
                    if (st) return st;
                }
            } else {
                fr.err_key = c;
                return ST_TYPE;
            }
        }
    }
    return ST_OK;
}

// Parse one frame.  `buf` must have SIMDJSON_PADDING readable bytes past `len`.
inline int parse_frame(od::parser &parser, const char *buf, size_t len, size_t capacity,
                       Frame &fr) noexcept {
    fr.reset();
    od::document doc;
    if (parser.iterate(buf, len, capacity).get(doc)) return ST_JSON;
    od::json_type t;
    if (doc.type().get(t)) return ST_JSON;
    int st;
    if (t == od::json_type::object) {
        od::object obj;
        if (doc.get_object().get(obj)) return ST_JSON;
        // Combined frames start with the key "stream" (or "data"); look at the
        // raw bytes rather than iterating twice.
        const char *q = buf, *qend = buf + len;
        while (q < qend && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n' || *q == '{')) ++q;
        std::string_view head(q, size_t(qend - q));
        bool envelope = head.substr(0, 8) == "\"stream\"" || head.substr(0, 6) == "\"data\"";
        if (envelope) {
            st = walk_envelope(obj, fr);
            if (st == ST_OK && fr.n_items == 0 && !fr.data_is_array) {
                fr.err_key = KC_DATA;
                st = ST_MISSING;
            }
        } else {
            st = walk_object(obj, fr.new_item(), fr, 0);
        }
    } else if (t == od::json_type::array) {
        // raw `!xxx@arr` stream: an array of payload objects
        fr.data_is_array = true;
        od::array arr;
        if (doc.get_array().get(arr)) return ST_JSON;
        st = ST_OK;
        for (auto el_r : arr) {
            od::object d;
            if (std::move(el_r).get_object().get(d)) return ST_TYPE;
            st = walk_object(d, fr.new_item(), fr, 0);
            if (st) break;
        }
    } else {
        return ST_SHAPE;
    }
    if (st) return st;
    if (!doc.at_end()) return ST_JSON;
    return ST_OK;
}

struct EngineImpl final : Engine {
    od::parser parser;
    explicit EngineImpl(size_t max_capacity) : parser(max_capacity) {}
    int parse(const char *buf, size_t len, size_t capacity, Frame &fr) noexcept override {
        return parse_frame(parser, buf, len, capacity, fr);
    }
    const char *name() const noexcept override { return MT_IMPL_NAME; }
};

}  // namespace MT_IMPL
}  // namespace mt
