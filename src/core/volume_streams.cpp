// Volume, continued: streams (create, open, read, write, release, parked
// operations) and push consumers (subscriptions, observers, snapshots).
// Names and directories are in volume.cpp. See volume.hpp for the
// CONCURRENCY MODEL and the lock order.
#include <fcntl.h>

#include <algorithm>
#include <cerrno>

#include "core/delivery.hpp"
#include "core/exit_watch.hpp"
#include "core/spill.hpp"
#include "core/stream.hpp"
#include "core/volume.hpp"

namespace capturefs::core {

StreamInfo Volume::info_of(const Node& n) const {
  StreamInfo info;
  info.id = n.ino;
  info.path = path_locked(n);
  info.writer_pid = n.creator_pid;
  info.writer_uid = n.creator_uid;
  info.created = n.created;
  return info;
}

void Volume::observe(std::shared_ptr<Observer> o) {
  std::lock_guard lk(tree_mu_);
  observers_.push_back(std::move(o));
}

void Volume::unobserve(const Observer* o) {
  std::lock_guard lk(tree_mu_);
  std::erase_if(observers_, [o](const std::shared_ptr<Observer>& x) { return x.get() == o; });
}

void Volume::sync_exits() {
  if (policy_.exits) policy_.exits->poll_now();
}

std::vector<StreamStats> Volume::snapshot() {
  const timespec t = now();
  std::vector<StreamStats> out;
  std::lock_guard lk(tree_mu_);
  for (const auto& [ino, n] : nodes_) {
    if (!n->stream || !n->linked || n->retired) continue;
    StreamStats st;
    st.info = info_of(*n);
    n->stream->stats(&st, t);
    out.push_back(std::move(st));
  }
  std::sort(out.begin(), out.end(),
            [](const StreamStats& a, const StreamStats& b) { return a.info.id < b.info.id; });
  return out;
}

void Volume::assign(Node& n, Effects& fx) {
  if (subs_.empty() || !n.stream || !n.linked || n.retired) return;
  const std::string path = path_locked(n);
  for (std::size_t i = 0; i < subs_.size(); ++i) {
    const std::size_t k = (next_sub_ + i) % subs_.size();
    const auto& sub = subs_[k];
    if (!sub->matches(path) || !sub->has_room()) continue;
    auto start = n.stream->attach_push(n.ino, sub, sub->window(), fx);
    if (!start) return;  // taken meanwhile
    StreamInfo info = info_of(n);
    info.start_offset = *start;
    sub->adopt(n.stream, info);
    next_sub_ = k + 1;
    return;
  }
}

std::shared_ptr<Subscription> Volume::subscribe(PathFilter filter, std::shared_ptr<Sink> sink,
                                                SubscriptionOptions opt) {
  auto sub = std::make_shared<Subscription>(*this, std::move(filter), sink, opt);
  sink->on_subscribed(sub);
  sub->start();
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    subs_.push_back(sub);
    offer_waiting(fx);  // streams that waited for a consumer, oldest first
  }
  settle(std::move(fx));
  return sub;
}

void Volume::unsubscribe(const Subscription* sub) {
  std::lock_guard lk(tree_mu_);
  std::erase_if(subs_, [sub](const std::shared_ptr<Subscription>& s) { return s.get() == sub; });
}

void Volume::offer_waiting(Effects& fx) {
  std::vector<NodePtr> waiting;
  for (const auto& [ino, n] : nodes_)
    if (n->stream && n->linked && !n->retired && !n->stream->has_consumer()) waiting.push_back(n);
  std::sort(waiting.begin(), waiting.end(),
            [](const NodePtr& a, const NodePtr& b) { return a->ino < b->ino; });
  for (const auto& n : waiting) assign(*n, fx);
}

void Volume::retire_pushed(std::uint64_t id, const std::shared_ptr<Stream>& s, Effects& fx) {
  NodePtr n = find(id);
  if (n && n->linked && n->stream == s) {
    n->told = s->push_target();  // hears of renames by the creator later on
    if (NodePtr p = find(n->parent)) retire(*p, *n, fx);
  }
}

void Volume::push_unname(std::uint64_t id, const std::shared_ptr<Stream>& s) {
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    retire_pushed(id, s, fx);
  }
  settle(std::move(fx));
}

void Volume::push_finished(std::uint64_t id, const std::shared_ptr<Stream>& s) {
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    // The name goes first, while the consumer is still attached: a stream
    // that is named and has no consumer would be offered again.
    retire_pushed(id, s, fx);
    s->detach_push(fx);
    // A subscription with a limit on active streams may take more now.
    offer_waiting(fx);
  }
  settle(std::move(fx));
}

void Volume::push_lost(std::uint64_t id, const std::shared_ptr<Stream>& s) {
  Effects fx;
  s->detach_push(fx);
  {
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(id);
    if (n && n->linked && n->stream == s) assign(*n, fx);
  }
  settle(std::move(fx));
}


namespace {
Role role_of(int flags) { return (flags & O_ACCMODE) == O_RDONLY ? Role::Reader : Role::Writer; }
}  // namespace

Result<Volume::Created> Volume::create(Ino parent, std::string_view name, std::uint32_t mode,
                                       int flags, const Caller& who) {
  if (auto st = check_name(name); !st) return Errno{st.error()};
  Effects fx;
  Result<Created> out = Errno{EIO};
  {
    std::lock_guard lk(tree_mu_);
    auto d = dir(parent);
    if (!d) return Errno{d.error()};
    NodePtr n;
    if (auto it = (*d)->children.find(name); it != (*d)->children.end()) {
      // A delivered name kept for its creator is no obstacle: the new file
      // is a new stream.
      if (NodePtr old = find(it->second); old->kind == Kind::Stream) (void)drop_if_ended(*old, fx);
    }
    if (auto it = (*d)->children.find(name); it != (*d)->children.end()) {
      // Lost a race with another creator: open what is there.
      if (flags & O_EXCL) return Errno{EEXIST};
      n = find(it->second);
      if (n->kind == Kind::Directory) return Errno{EISDIR};
      if (n->kind == Kind::Symlink) return Errno{ELOOP};  // the kernel follows links itself
    } else {
      n = add_node(**d, name, Kind::Stream, mode, who);
      apply_hold(*n, fx);
      notify(fx, [info = info_of(*n)](Observer& o) { o.created(info); });
    }
    auto h = attach(*n, flags, fx, who);
    if (!h && h.error() == ESTALE) {
      // Its end went out between the check above and now: the name was
      // dropped, so this create makes the new stream after all.
      n = add_node(**d, name, Kind::Stream, mode, who);
      apply_hold(*n, fx);
      notify(fx, [info = info_of(*n)](Observer& o) { o.created(info); });
      h = attach(*n, flags, fx, who);
    }
    if (!h) return Errno{h.error()};
    ++n->nlookup;
    out = Created{attr_of(*n), std::move(h.value())};
  }
  settle(std::move(fx));
  return out;
}

Result<std::unique_ptr<Handle>> Volume::attach(Node& n, int flags, Effects& fx, const Caller& who,
                                               bool self_read) {
  const Role role = role_of(flags);
  if ((flags & O_TRUNC) && role == Role::Writer) {
    if (auto st = n.stream->truncate(0, fx); !st) return Errno{st.error()};
  }
  auto h = std::make_unique<Handle>();
  h->ino = n.ino;
  h->role = role;
  h->nonblock = (flags & O_NONBLOCK) != 0;
  h->creator_pid = n.creator_pid;
  h->stream = n.stream;
  if (role == Role::Reader && self_read) {
    h->self_read = true;  // reads read back; not the consumer
  } else if (role == Role::Reader) {
    auto st = n.stream->add_reader();
    if (st) h->shift = *st;
    else if (st.error() == EBUSY) h->passive = true;  // reads get EBUSY
    else return Errno{st.error()};
  } else {
    // Before assign(): a writerless stream reads as ended. A stream whose end
    // a push consumer took meanwhile (after drop_if_ended looked) is not
    // joined: its name goes and the caller gets ESTALE, as in open().
    if (!n.stream->add_writer()) {
      if (NodePtr p = find(n.parent); p && n.linked) let_go(*p, n, fx);
      return Errno{ESTALE};
    }
    h->opener_pid = who.pid;
    h->watch_exit = n.stream->holds();
    n.stream->note_writer(who.pid);
    if (!n.stream->has_consumer()) assign(n, fx);
  }
  return h;
}

namespace {
// The caller writes the stream itself: the same thread (FUSE names the
// calling thread) opened it for writing and has written to it through that
// handle, still open (a held stream: has it open for writing at all; a
// consumer of a held stream waits for every writer, its own included). So
// ffmpeg rereading its output in the thread that wrote it reads back; a
// wrapper that keeps a writer open without writing, and a program whose
// other threads read what its writer threads write, are consumers.
bool writes_itself(const Stream& s, std::int32_t tid) {
  if (tid <= 0) return false;
  const std::vector<std::int32_t> writers = s.writer_pids(/*written_only=*/!s.holds());
  return std::find(writers.begin(), writers.end(), tid) != writers.end();
}
}  // namespace

Result<std::unique_ptr<Handle>> Volume::open(Ino ino, int flags, const Caller& who) {
  Effects fx;
  Result<std::unique_ptr<Handle>> out = Errno{EIO};
  {
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(ino);
    // The name went between the kernel's lookup and this open (delivered,
    // unlinked): ESTALE makes the kernel look the path up again, so that
    // O_CREAT creates a new stream and a plain open gets ENOENT.
    if (!n || !n->linked) return Errno{ESTALE};
    if (n->kind == Kind::Directory) return Errno{EISDIR};
    if (n->kind == Kind::Symlink) return Errno{ELOOP};
    if (role_of(flags) == Role::Writer && drop_if_ended(*n, fx)) {
      // Its bytes went out: a writer joining now would write to nobody. The
      // name is gone, and ESTALE makes the kernel look the path up again,
      // so that O_CREAT makes a new stream (and a plain open gets ENOENT).
      out = Errno{ESTALE};
    } else {
      // A read-only open by a thread that writes the stream reads back.
      const bool self_read = role_of(flags) == Role::Reader && n->kind == Kind::Stream &&
                             writes_itself(*n->stream, who.pid);
      out = attach(*n, flags, fx, who, self_read);
    }
  }
  settle(std::move(fx));
  return out;
}

void Volume::abort(Handle& h, std::string reason) {
  Effects fx;
  h.stream->abort(std::move(reason), EIO, fx);
  settle(std::move(fx));
}

void Volume::flush(Handle& h) {
  if (h.role != Role::Reader || h.passive || h.self_read || !h.stream->fully_read()) return;
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(h.ino);
    if (n && n->linked && n->stream == h.stream && n->stream->fully_read()) {
      if (NodePtr p = find(n->parent)) retire(*p, *n, fx);
    }
  }
  settle(std::move(fx));
}

void Volume::release(std::unique_ptr<Handle> h) {
  if (h->passive || h->self_read) return;
  if (h->role == Role::Writer) h->stream->forget_writer(h->opener_pid, h->wrote);
  Effects fx;
  // A stream closed empty by a writer waits for its creator to exit (or
  // reopen it) before a push consumer sees its end.
  const bool may_linger = h->role == Role::Writer && policy_.exits && h->creator_pid > 0 &&
                          h->creator_pid != self_pid_;
  const Released rel = h->stream->release(h->role, may_linger, fx);
  if (rel.linger) {
    std::weak_ptr<Stream> w = h->stream;
    const bool watched = policy_.exits->watch(h->creator_pid, [w] {
      if (auto s = w.lock()) {
        Effects later;
        s->end_linger(later);
        settle(std::move(later));
      }
    });
    if (!watched) h->stream->end_linger(fx);  // already gone
  }
  if (rel.done) {
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(h->ino);
    if (n && n->linked && n->stream == h->stream && n->stream->delivered()) {
      if (NodePtr p = find(n->parent)) retire(*p, *n, fx);
    }
  } else if (h->role == Role::Reader) {
    // A reader that left early: a subscriber may take the rest.
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(h->ino);
    if (n && n->linked && n->stream == h->stream && !n->stream->has_consumer()) assign(*n, fx);
  }
  h.reset();
  settle(std::move(fx));
}

Outcome<std::size_t> Volume::write(Handle& h, std::uint64_t off, std::span<const std::byte> data,
                                   WaitKey key, WriteDone done) {
  if (h.role != Role::Writer) return Result<std::size_t>(Errno{EBADF});
  if (!h.wrote.load(std::memory_order_relaxed) && !h.wrote.exchange(true)) h.stream->note_wrote(h.opener_pid);
  Effects fx;
  auto out = h.stream->write(off, data, key, std::move(done), fx);
  settle(std::move(fx));
  return out;
}

Outcome<std::span<const std::byte>> Volume::read(Handle& h, std::uint64_t off, std::size_t size,
                                                 WaitKey key, ReadDone done) {
  if (h.role != Role::Reader || h.self_read) return h.stream->read_back(off, size);
  if (h.passive) return Result<std::span<const std::byte>>(Errno{EBUSY});
  Effects fx;
  auto out = h.stream->read(h.shift + off, size, h.nonblock, key, std::move(done), fx);
  settle(std::move(fx));
  return out;
}

void Volume::arm(WaitKey key) {
  if (auto s = parking_.find(key)) {
    Effects fx;
    s->arm(key, fx);
    settle(std::move(fx));
  }
}

void Volume::cancel(WaitKey key) {
  if (auto s = parking_.find(key)) {
    Effects fx;
    s->cancel(key, fx);
    settle(std::move(fx));
  }
}

void Volume::fail_parked(int err) {
  Effects fx;
  for (auto& s : parking_.all()) s->fail_parked(err, fx);
  settle(std::move(fx));
}

}  // namespace capturefs::core
