// Effects and settle(): see core/effects.hpp.
#include "core/effects.hpp"

#include <iterator>
#include <utility>

#include "core/stream.hpp"

namespace capturefs::core {

void Effects::merge_woken(std::vector<std::weak_ptr<Stream>> w) {
  if (woken.empty()) {
    woken = std::move(w);
  } else {
    woken.insert(woken.end(), std::make_move_iterator(w.begin()), std::make_move_iterator(w.end()));
  }
}

namespace {
// The Effects being settled by this thread, if any.
thread_local Effects* running = nullptr;
}  // namespace

bool settling() { return running != nullptr; }

void settle(Effects&& fx) {
  // A callback that settles effects of its own (the completion of a spill
  // file read or write) hands them to the settle() running it, so chains of
  // completions loop here instead of nesting deeper and deeper.
  if (running != nullptr) {
    running->calls.insert(running->calls.end(), std::make_move_iterator(fx.calls.begin()),
                          std::make_move_iterator(fx.calls.end()));
    running->merge_woken(std::move(fx.woken));
    fx.calls.clear();
    fx.woken.clear();
    return;
  }
  running = &fx;
  struct Reset {
    ~Reset() { running = nullptr; }
  } reset;
  while (!fx.calls.empty() || !fx.woken.empty()) {
    auto calls = std::move(fx.calls);
    fx.calls.clear();
    for (auto& c : calls) c();
    auto woken = std::move(fx.woken);
    fx.woken.clear();
    for (auto& w : woken) {
      if (auto s = w.lock()) s->pump(fx);
    }
  }
}

}  // namespace capturefs::core
