#include "core/parking.hpp"

#include <mutex>

namespace capturefs::core {

void Parking::add(WaitKey key, const std::shared_ptr<Stream>& s) {
  std::lock_guard lk(mu_);
  if (key != 0) keys_[key] = s;
  Held& h = streams_[s.get()];
  h.stream = s;
  ++h.ops;
}

void Parking::remove(WaitKey key, const Stream* s) {
  std::lock_guard lk(mu_);
  if (key != 0) keys_.erase(key);
  auto it = streams_.find(s);
  if (it != streams_.end() && --it->second.ops == 0) streams_.erase(it);
}

std::shared_ptr<Stream> Parking::find(WaitKey key) const {
  std::lock_guard lk(mu_);
  auto it = keys_.find(key);
  return it == keys_.end() ? nullptr : it->second.lock();
}

std::vector<std::shared_ptr<Stream>> Parking::all() const {
  std::vector<std::shared_ptr<Stream>> out;
  std::lock_guard lk(mu_);
  for (const auto& [p, h] : streams_) {
    if (auto s = h.stream.lock()) out.push_back(std::move(s));
  }
  return out;
}

}  // namespace capturefs::core
