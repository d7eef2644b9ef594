// What happens to the streams at unmount: those a push consumer has, or
// will take, are delivered to the end; those nobody will read are
// discarded, and named so that the loss is never silent.
#include <algorithm>

#include "core/delivery.hpp"
#include "core/stream.hpp"
#include "core/volume.hpp"

namespace capturefs::core {

namespace {
// Stream nodes with a name, oldest first.
template <class Nodes>
auto named_streams(const Nodes& nodes) {
  std::vector<typename Nodes::mapped_type> out;
  for (const auto& [ino, n] : nodes)
    if (n->stream && n->linked && !n->retired) out.push_back(n);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->ino < b->ino; });
  return out;
}
}  // namespace

std::vector<Volume::Leftover> Volume::discard_unread() {
  std::vector<Leftover> out;
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    for (const NodePtr& n : named_streams(nodes_)) {
      if (n->stream->has_consumer()) continue;
      const std::string path = path_locked(*n);
      const bool taken = std::any_of(subs_.begin(), subs_.end(),
                                     [&](const auto& sub) { return sub->matches(path); });
      if (taken) continue;
      out.push_back(Leftover{path, n->stream->unconsumed()});
      if (NodePtr p = find(n->parent)) detach(*p, *n, fx, false, kDiscardedReason);
    }
  }
  settle(std::move(fx));
  return out;
}

std::vector<Volume::Leftover> Volume::undelivered() {
  std::vector<Leftover> out;
  std::lock_guard lk(tree_mu_);
  for (const NodePtr& n : named_streams(nodes_)) {
    const std::string path = path_locked(*n);
    if (!n->stream->has_consumer() &&
        std::none_of(subs_.begin(), subs_.end(), [&](const auto& sub) { return sub->matches(path); }))
      continue;  // nobody will take it (discard_unread's)
    out.push_back(Leftover{path, n->stream->unconsumed()});
  }
  return out;
}

std::vector<Volume::Leftover> Volume::cut_undelivered(const std::string& reason) {
  std::vector<Leftover> out;
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    for (const NodePtr& n : named_streams(nodes_)) {
      out.push_back(Leftover{path_locked(*n), n->stream->unconsumed()});
      if (n->stream->has_consumer()) {
        n->stream->abort(reason, 0, fx);
      } else if (NodePtr p = find(n->parent)) {
        detach(*p, *n, fx);  // waiting its turn: never announced
      }
    }
  }
  settle(std::move(fx));
  return out;
}

}  // namespace capturefs::core
