// Names (stream names, symbols) -> small ints, looked up by string_view.
//
// The parser looks up two names per frame (the stream, the symbol), and with
// the whole market subscribed (thousands of symbols, three streams each) the
// tables no longer stay in L2 between two frames of the same name: the lookup
// runs on a cold cache.  A node-based std::unordered_map then costs up to four
// dependent misses per lookup (bucket array, the node before the bucket, the
// node, the key's bytes).  This table is flat, open addressing with linear
// probing, and each slot is one cache line holding the full 64-bit hash, the
// id, the length and, when it fits (kInline bytes: every Binance symbol and
// every depth, bookTicker and trade stream name do), the key's bytes: a hit on
// such a key reads one line.
//
// Capacity is a power of two, at most half full, grown by rehashing the
// stored hashes (the bytes are not hashed again).  Every key is also copied
// into a deque, whose elements never move, and the views find() and add()
// hand out point there, never into a slot: a caller may keep one across a
// growth, and it stays valid until clear().  A key longer than kInline is
// compared at that copy.  A lookup hashes the bytes in place (no std::string
// per frame) and neither allocates nor throws; add() may throw bad_alloc,
// leaving the names as they were.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>

namespace mt {

class NameMap {
 public:
  static constexpr size_t kInline = 40;  // key bytes held in the slot itself

  // The id of name p[0..n), or -1; when found and `stored` is given, it is
  // set to view the stored copy of the name (valid until clear()).
  int find(const char *p, size_t n, std::string_view *stored = nullptr) const noexcept {
    if (!slots_) return -1;
    const uint64_t h = hash(p, n);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot &s = slots_[i];
      if (!s.copy) return -1;  // an empty slot ends the probe
      if (s.hash == h && s.len == n &&
          std::memcmp(n <= kInline ? s.key : s.copy, p, n) == 0) {
        if (stored) *stored = std::string_view(s.copy, n);
        return s.id;
      }
    }
  }
  // Adds a name; returns a view of its stored copy (valid until clear()).  A
  // name already present keeps its first id (as std::unordered_map::emplace did).
  std::string_view add(const char *p, size_t n, int id) {
    std::string_view known;
    if (find(p, n, &known) >= 0) return known;
    if (2 * (count_ + 1) > mask_ + 1) grow();  // may throw: nothing changed yet
    keys_.emplace_back(p, n);                  // may throw: the table is only larger
    const std::string &key = keys_.back();
    const uint64_t h = hash(p, n);
    Slot &s = slots_[free_slot(slots_.get(), mask_, h)];
    s.hash = h;
    s.copy = key.data();
    s.id = id;
    s.len = static_cast<uint32_t>(n);
    if (n <= kInline) std::memcpy(s.key, p, n);
    ++count_;
    return std::string_view(key);
  }
  // Forgets every name; the slots are kept for the names that follow.
  void clear() noexcept {
    if (slots_) std::memset(static_cast<void *>(slots_.get()), 0, (mask_ + 1) * sizeof(Slot));
    count_ = 0;
    keys_.clear();
  }

 private:
  struct alignas(64) Slot {
    uint64_t hash;
    const char *copy;  // the deque's copy of the key; nullptr: the slot is empty
    int32_t id;
    uint32_t len;
    char key[kInline];  // the key's bytes when len <= kInline
  };
  static_assert(sizeof(Slot) == 64, "a slot is one cache line");

  static constexpr size_t kFirst = 16;  // slots allocated by the first add()

  // 64-bit multiply-xorshift over 8-byte words, seeded with the length (so
  // keys that differ only by trailing NULs differ), then a final avalanche so
  // the low bits that pick the slot depend on every byte.
  static uint64_t hash(const char *p, size_t n) noexcept {
    constexpr uint64_t K = 0x9e3779b97f4a7c15ULL;  // 2^64 / golden ratio, odd
    uint64_t h = (n + 1) * K;
    uint64_t w;
    for (; n >= 8; p += 8, n -= 8) {
      std::memcpy(&w, p, 8);
      h = (h ^ w) * K;
      h ^= h >> 29;
    }
    if (n) {
      w = 0;
      std::memcpy(&w, p, n);
      h = (h ^ w) * K;
      h ^= h >> 29;
    }
    h ^= h >> 32;
    h *= K;
    h ^= h >> 29;
    return h;
  }

  static size_t free_slot(const Slot *slots, size_t mask, uint64_t h) noexcept {
    size_t i = h & mask;
    while (slots[i].copy) i = (i + 1) & mask;
    return i;
  }

  void grow() {
    const size_t cap = slots_ ? 2 * (mask_ + 1) : kFirst;
    std::unique_ptr<Slot[]> next(new Slot[cap]());  // zeroed: every slot empty
    for (size_t i = 0; slots_ && i <= mask_; ++i)
      if (slots_[i].copy) next[free_slot(next.get(), cap - 1, slots_[i].hash)] = slots_[i];
    slots_ = std::move(next);
    mask_ = cap - 1;
  }

  std::unique_ptr<Slot[]> slots_;  // mask_ + 1 slots, or none before the first add()
  size_t mask_ = 0;
  size_t count_ = 0;
  std::deque<std::string> keys_;
};

}  // namespace mt
