// Names (stream names, symbols) -> small ints, looked up by string_view.
//
// A lookup hashes the bytes in place: no std::string is built per frame (a
// stream name such as "btcusdt@bookTicker" is longer than the small-string
// buffer, so building one costs a malloc and a free).  The keys live in a
// deque, whose elements never move, so the views in the map stay valid until
// clear().
#pragma once

#include <cstddef>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>

namespace mt {

class NameMap {
 public:
  // The id of name p[0..n), or -1; when found and `stored` is given, it is
  // set to view the stored copy of the name (valid until clear()).
  int find(const char *p, size_t n, std::string_view *stored = nullptr) const {
    auto it = ids_.find(std::string_view(p, n));
    if (it == ids_.end()) return -1;
    if (stored) *stored = it->first;
    return it->second;
  }
  // Adds a name that find() did not know; returns a view of its stored copy
  // (valid until clear()).
  std::string_view add(const char *p, size_t n, int id) {
    keys_.emplace_back(p, n);
    std::string_view key(keys_.back());
    ids_.emplace(key, id);
    return key;
  }
  void clear() {
    ids_.clear();
    keys_.clear();
  }

 private:
  std::deque<std::string> keys_;
  std::unordered_map<std::string_view, int> ids_;
};

}  // namespace mt
