#include "core/budget.hpp"

#include <algorithm>
#include <cassert>

namespace capturefs::core {

std::size_t Budget::used() const {
  std::lock_guard lk(mu_);
  return used_;
}

std::size_t Budget::peak() const {
  std::lock_guard lk(mu_);
  return peak_;
}

bool Budget::try_reserve(std::size_t n, const std::shared_ptr<Stream>& waiter) {
  std::lock_guard lk(mu_);
  if (n <= cap_ - used_) {
    used_ += n;
    peak_ = std::max(peak_, used_);
    return true;
  }
  if (waiter) remember(waiter);
  return false;
}

void Budget::wait(const std::shared_ptr<Stream>& waiter) {
  std::lock_guard lk(mu_);
  remember(waiter);
}

void Budget::remember(const std::shared_ptr<Stream>& waiter) {
  // Compared by owner, without lock(): a temporary strong reference made
  // here could be the last one, and would destroy a stream under mu_.
  const bool known = std::any_of(waiting_.begin(), waiting_.end(), [&](const std::weak_ptr<Stream>& w) {
    return !w.owner_before(waiter) && !waiter.owner_before(w);
  });
  if (!known) waiting_.push_back(waiter);
}

std::vector<std::weak_ptr<Stream>> Budget::release(std::size_t n) {
  std::vector<std::weak_ptr<Stream>> woken;
  if (n == 0) return woken;
  std::lock_guard lk(mu_);
  assert(n <= used_);
  used_ -= n;
  woken.swap(waiting_);
  return woken;
}

}  // namespace capturefs::core
