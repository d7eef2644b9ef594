#include "core/volume.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "core/delivery.hpp"
#include "core/exit_watch.hpp"
#include "core/spill.hpp"
#include "core/stream.hpp"

namespace capturefs::core {

namespace {
Meta fresh_meta(std::uint32_t mode, const Caller& who) {
  Meta m;
  m.mode = mode & 07777;
  m.uid = who.uid;
  m.gid = who.gid;
  m.atime = m.mtime = m.ctime = now();
  return m;
}
}  // namespace

Volume::Volume(Limits limits, Policy policy)
    : limits_(limits),
      policy_(std::move(policy)),
      self_pid_(static_cast<std::int32_t>(getpid())),
      budget_(limits.max_memory) {
  auto root = std::make_shared<Node>();
  root->ino = kRootIno;
  root->kind = Kind::Directory;
  root->parent = kRootIno;
  root->meta = fresh_meta(0755, Caller{getuid(), getgid(), 0});
  root->nlookup = 1;  // the kernel holds the root implicitly
  nodes_.emplace(kRootIno, std::move(root));
}

Volume::~Volume() {
  if (policy_.exits) policy_.exits->clear();  // no callback into us from here on
  std::vector<std::shared_ptr<Subscription>> subs;
  {
    std::lock_guard lk(tree_mu_);
    subs = subs_;
  }
  for (auto& s : subs) s->close();
}

std::string Volume::path_locked(const Node& n) const {
  std::vector<const std::string*> parts;
  for (const Node* p = &n; p != nullptr && p->ino != kRootIno;) {
    parts.push_back(&p->name);
    NodePtr up = find(p->parent);
    p = up.get();
  }
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!out.empty()) out += '/';
    out += **it;
  }
  return out;
}

std::string Volume::path_of(Ino ino) {
  std::lock_guard lk(tree_mu_);
  NodePtr n = find(ino);
  return n ? path_locked(*n) : std::string();
}

Status Volume::check_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos)
    return Errno{EINVAL};
  if (name.size() > 255) return Errno{ENAMETOOLONG};
  return Ok{};
}

Volume::NodePtr Volume::find(Ino ino) const {
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? nullptr : it->second;
}

Result<Volume::NodePtr> Volume::dir(Ino ino) const {
  NodePtr n = find(ino);
  if (!n || !n->linked) return Errno{ENOENT};
  if (n->kind != Kind::Directory) return Errno{ENOTDIR};
  return n;
}

Result<Volume::NodePtr> Volume::child(const Node& d, std::string_view name) const {
  auto it = d.children.find(name);
  if (it == d.children.end()) return Errno{ENOENT};
  return find(it->second);
}

Attr Volume::attr_of(const Node& n) const {
  if (n.kind == Kind::Stream) return n.stream->attr(n.ino);
  Attr a;
  a.ino = n.ino;
  a.kind = n.kind;
  a.meta = n.meta;
  if (n.kind == Kind::Symlink) {
    a.nlink = n.linked ? 1 : 0;
    a.size = n.target.size();
    return a;
  }
  a.nlink = n.linked ? 2 + n.subdirs : 0;
  a.size = 4096;
  a.blocks = 8;
  return a;
}

void Volume::apply_hold(const Node& n, Effects& fx) {
  if (n.stream && policy_.hold) n.stream->set_hold(policy_.hold(path_locked(n)), fx);
}

Volume::NodePtr Volume::add_node(Node& parent, std::string_view name, Kind kind,
                                 std::uint32_t mode, const Caller& who) {
  auto n = std::make_shared<Node>();
  n->ino = next_ino_++;
  n->kind = kind;
  n->parent = parent.ino;
  n->name = std::string(name);
  if (kind == Kind::Stream) {
    n->stream = std::make_shared<Stream>(budget_, parking_, limits_.max_stream,
                                         fresh_meta(mode, who), policy_.spill.get());
  } else {
    n->meta = fresh_meta(mode, who);
    if (kind == Kind::Directory) ++parent.subdirs;
  }
  n->creator_pid = who.pid;
  n->creator_uid = who.uid;
  n->created = now();
  parent.children.emplace(n->name, n->ino);
  parent.meta.mtime = parent.meta.ctime = now();
  nodes_.emplace(n->ino, n);
  return n;
}

void Volume::retire(Node& parent, Node& n, Effects& fx) {
  // Tools keep working on their output after close: utimensat and chmod
  // (gzip, bzip2), stat, rename of a temp file into place (rsync). So the
  // name of a delivered stream stays while the process that created it
  // lives. Observers hear of the end now; a writer that opens the name
  // again starts a new stream (drop_if_ended).
  if (n.retired) return;
  const std::int32_t pid = n.creator_pid;
  if (!policy_.exits || pid <= 0 || pid == self_pid_) return let_go(parent, n, fx);
  if (n.stream && !observers_.empty()) {
    StreamEnd end;
    end.total = n.stream->attr(n.ino).size;
    notify(fx, [id = n.ino, end](Observer& o) { o.ended(id, end); });
  }
  n.retired = true;
  std::vector<Ino>& kept = retired_by_pid_[pid];
  const bool first = kept.empty();
  kept.push_back(n.ino);
  if (kept.size() > 2 * kMaxRetired) {  // a long-lived creator: drop what went meanwhile
    std::erase_if(kept, [&](Ino i) {
      const NodePtr k = find(i);
      return !k || !k->linked || !k->retired;
    });
  }
  retired_order_.push_back(n.ino);
  trim_retired(fx);
  // One watch per creating process: its exit lets go of all its names.
  if (first) {
    fx.calls.emplace_back([this, pid] {
      if (!policy_.exits->watch(pid, [this, pid] { creator_exited(pid); })) creator_exited(pid);  // gone
    });
  }
}

void Volume::trim_retired(Effects& fx) {
  while (retired_order_.size() > kMaxRetired) {
    const NodePtr k = find(retired_order_.front());
    retired_order_.pop_front();
    if (!k || !k->linked || !k->retired) continue;  // went meanwhile
    if (NodePtr p = find(k->parent)) let_go(*p, *k, fx);
  }
}

void Volume::creator_exited(std::int32_t pid) {
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    auto it = retired_by_pid_.find(pid);
    if (it != retired_by_pid_.end()) {
      const std::vector<Ino> kept = std::move(it->second);
      retired_by_pid_.erase(it);
      for (const Ino i : kept) {
        NodePtr n = find(i);
        // Still kept for this process (not renamed over, unlinked, or let go).
        if (n && n->linked && n->retired && n->creator_pid == pid) {
          if (NodePtr p = find(n->parent)) let_go(*p, *n, fx);
        }
      }
    }
  }
  settle(std::move(fx));
}

bool Volume::drop_if_ended(Node& n, Effects& fx) {
  if (!n.retired && !n.stream->end_handed_out()) return false;
  if (NodePtr p = find(n.parent)) let_go(*p, n, fx);
  return true;
}

void Volume::let_go(Node& parent, Node& n, Effects& fx) {
  detach(parent, n, fx, true);
  if (name_gone_)
    fx.calls.emplace_back([f = name_gone_, p = parent.ino, ino = n.ino, name = n.name] { f(p, ino, name); });
}

void Volume::on_name_gone(NameGone f) {
  std::lock_guard lk(tree_mu_);
  name_gone_ = std::move(f);
}

void Volume::detach(Node& parent, Node& n, Effects& fx, bool delivered, const char* reason) {
  if (n.stream && !n.retired && !observers_.empty()) {
    StreamEnd end;
    end.total = n.stream->attr(n.ino).size;
    end.complete = delivered;
    if (!delivered) end.reason = reason;
    notify(fx, [id = n.ino, end](Observer& o) { o.ended(id, end); });
  }
  parent.children.erase(n.name);
  if (n.kind == Kind::Directory) --parent.subdirs;
  parent.meta.mtime = parent.meta.ctime = now();
  n.linked = false;
  if (n.stream) n.stream->unlinked(fx);
  maybe_drop(n);
}

void Volume::maybe_drop(const Node& n) {
  if (n.ino != kRootIno && !n.linked && n.nlookup == 0) nodes_.erase(n.ino);
}

Result<Attr> Volume::lookup(Ino parent, std::string_view name, std::int32_t pid) {
  if (name.size() > 255) return Errno{ENAMETOOLONG};  // as create/mkdir say (not ENOENT)
  std::lock_guard lk(tree_mu_);
  auto d = dir(parent);
  if (!d) return Errno{d.error()};
  auto c = child(**d, name);
  if (!c) return Errno{c.error()};
  // A delivered name kept for its creator exists for that process only.
  if ((*c)->retired && (pid == 0 || pid != (*c)->creator_pid)) return Errno{ENOENT};
  ++(*c)->nlookup;
  return attr_of(**c);
}

void Volume::forget(Ino ino, std::uint64_t n) {
  std::lock_guard lk(tree_mu_);
  NodePtr node = find(ino);
  if (!node) return;
  node->nlookup -= std::min(n, node->nlookup);
  maybe_drop(*node);
}

Result<Attr> Volume::getattr(Ino ino) {
  std::lock_guard lk(tree_mu_);
  NodePtr n = find(ino);
  if (!n) return Errno{ENOENT};
  return attr_of(*n);
}

Result<Attr> Volume::setattr(Ino ino, const SetAttr& sa) {
  Effects fx;
  Result<Attr> out = Errno{ENOENT};
  {
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(ino);
    if (!n) return Errno{ENOENT};
    if (n->kind == Kind::Stream) {
      if (sa.set_size) {
        if (auto st = n->stream->truncate(sa.size, fx); !st) return Errno{st.error()};
      }
      n->stream->set_meta(sa);
    } else {
      if (sa.set_size) return Errno{n->kind == Kind::Directory ? EISDIR : EINVAL};
      if (sa.set_mode) n->meta.mode = sa.mode & 07777;
      if (sa.set_uid) n->meta.uid = sa.uid;
      if (sa.set_gid) n->meta.gid = sa.gid;
      if (sa.set_atime) n->meta.atime = sa.atime;
      if (sa.set_mtime) n->meta.mtime = sa.mtime;
      n->meta.ctime = now();
    }
    out = attr_of(*n);
  }
  settle(std::move(fx));
  return out;
}

Result<Attr> Volume::make(Ino parent, std::string_view name, Kind kind, std::uint32_t mode,
                          const Caller& who) {
  if (auto st = check_name(name); !st) return Errno{st.error()};
  Effects fx;
  Result<Attr> out = Errno{EIO};
  {
    std::lock_guard lk(tree_mu_);
    auto d = dir(parent);
    if (!d) return Errno{d.error()};
    if ((*d)->children.contains(name)) return Errno{EEXIST};
    NodePtr n = add_node(**d, name, kind, mode, who);
    apply_hold(*n, fx);
    ++n->nlookup;
    out = attr_of(*n);
  }
  settle(std::move(fx));
  return out;
}

Result<Attr> Volume::mkdir(Ino parent, std::string_view name, std::uint32_t mode,
                           const Caller& who) {
  return make(parent, name, Kind::Directory, mode, who);
}

Result<Attr> Volume::mknod(Ino parent, std::string_view name, std::uint32_t mode,
                           const Caller& who) {
  return make(parent, name, Kind::Stream, mode, who);  // offered to consumers once a writer opens it
}

Result<Attr> Volume::symlink(Ino parent, std::string_view name, std::string_view target,
                             const Caller& who) {
  if (target.empty()) return Errno{ENOENT};
  if (target.size() >= 4096) return Errno{ENAMETOOLONG};
  if (auto st = check_name(name); !st) return Errno{st.error()};
  std::lock_guard lk(tree_mu_);
  auto d = dir(parent);
  if (!d) return Errno{d.error()};
  if ((*d)->children.contains(name)) return Errno{EEXIST};
  NodePtr n = add_node(**d, name, Kind::Symlink, 0777, who);
  n->target = std::string(target);
  ++n->nlookup;
  return attr_of(*n);
}

Result<std::string> Volume::readlink(Ino ino) {
  std::lock_guard lk(tree_mu_);
  NodePtr n = find(ino);
  if (!n) return Errno{ENOENT};
  if (n->kind != Kind::Symlink) return Errno{EINVAL};
  return n->target;
}

Status Volume::unlink(Ino parent, std::string_view name) {
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    auto d = dir(parent);
    if (!d) return Errno{d.error()};
    auto c = child(**d, name);
    if (!c) return Errno{c.error()};
    if ((*c)->kind == Kind::Directory) return Errno{EISDIR};
    detach(**d, **c, fx);
  }
  settle(std::move(fx));
  return Ok{};
}

Status Volume::rmdir(Ino parent, std::string_view name) {
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    auto d = dir(parent);
    if (!d) return Errno{d.error()};
    auto c = child(**d, name);
    if (!c) return Errno{c.error()};
    if ((*c)->kind != Kind::Directory) return Errno{ENOTDIR};
    // Names kept for their creators do not count: they are gone for listings.
    std::vector<NodePtr> kept;
    for (const auto& [nm, ino] : (*c)->children) {
      NodePtr k = find(ino);
      if (!k || !k->retired) return Errno{ENOTEMPTY};
      kept.push_back(std::move(k));
    }
    for (const auto& k : kept) detach(**c, *k, fx, true);
    detach(**d, **c, fx);
  }
  settle(std::move(fx));
  return Ok{};
}

Status Volume::rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname,
                      unsigned flags) {
  if ((flags & ~(kRenameNoReplace | kRenameExchange)) != 0 ||
      flags == (kRenameNoReplace | kRenameExchange))
    return Errno{EINVAL};
  if (auto st = check_name(newname); !st) return Errno{st.error()};
  Effects fx;
  {
    std::lock_guard lk(tree_mu_);
    auto sd = dir(parent);
    if (!sd) return Errno{sd.error()};
    auto dd = dir(newparent);
    if (!dd) return Errno{dd.error()};
    Node& sp = **sd;
    Node& dp = **dd;
    auto sc = child(sp, name);
    if (!sc) return Errno{sc.error()};
    Node& src = **sc;
    NodePtr dst;
    if (auto it = dp.children.find(newname); it != dp.children.end()) dst = find(it->second);
    if (dst.get() == &src) return Ok{};
    // A directory cannot move below itself.
    auto inside = [&](Ino top, Ino ino) {
      for (NodePtr p = find(ino); p; p = p->ino == kRootIno ? nullptr : find(p->parent))
        if (p->ino == top) return true;
      return false;
    };
    if (src.kind == Kind::Directory && inside(src.ino, dp.ino)) return Errno{EINVAL};
    if ((flags & kRenameNoReplace) && dst) return Errno{EEXIST};
    if (flags & kRenameExchange) {
      if (!dst) return Errno{ENOENT};
      if (dst->kind == Kind::Directory && inside(dst->ino, sp.ino)) return Errno{EINVAL};
      sp.children[src.name] = dst->ino;
      dp.children[dst->name] = src.ino;
      const int d = int{src.kind == Kind::Directory} - int{dst->kind == Kind::Directory};
      if (d != 0 && sp.ino != dp.ino) {
        sp.subdirs -= d;
        dp.subdirs += d;
      }
      std::swap(src.name, dst->name);
      std::swap(src.parent, dst->parent);
    } else {
      if (dst) {
        if (src.kind == Kind::Directory && dst->kind != Kind::Directory) return Errno{ENOTDIR};
        if (src.kind != Kind::Directory && dst->kind == Kind::Directory) return Errno{EISDIR};
        if (!dst->children.empty()) return Errno{ENOTEMPTY};
        detach(dp, *dst, fx);
      }
      sp.children.erase(src.name);
      if (src.kind == Kind::Directory) {
        --sp.subdirs;
        ++dp.subdirs;
      }
      src.name = std::string(newname);
      src.parent = dp.ino;
      dp.children.emplace(src.name, src.ino);
      if (src.stream && !src.stream->has_consumer()) assign(src, fx);
    }
    // Every stream that moved: the renamed node(s), and all streams below a
    // renamed directory (their paths changed too).
    std::vector<Node*> streams;
    for (Node* top : {&src, dst.get()}) {
      for (std::vector<Node*> todo = {top}; !todo.empty();) {
        Node* n = todo.back();
        todo.pop_back();
        if (n == nullptr) continue;
        if (n->stream) streams.push_back(n);
        for (const auto& [child_name, ino] : n->children)
          if (NodePtr c = find(ino)) todo.push_back(c.get());
      }
    }
    for (Node* moved : streams) {
      if (!moved->linked) continue;
      std::string p = path_locked(*moved);
      // Told now, under the tree lock (Subscription::mu_ nests inside it),
      // so that no delivery thread can announce the stream under its old
      // path once the new name releases it from --hold below. Once the
      // consumer has let go of a delivered stream, the consumer that had it
      // hears of the rename after the end (exactly once: one path or other).
      if (auto t = moved->stream->push_target()) {
        t->renamed(moved->ino, p);
      } else if (moved->retired) {
        if (auto t2 = moved->told.lock()) t2->renamed_after_end(moved->ino, p);
      }
      notify(fx, [id = moved->ino, p](Observer& o) { o.renamed(id, p); });
    }
    // --hold follows the new name; after the rename notices, so that a
    // stream the new name releases is announced under that name.
    apply_hold(src, fx);
    if (dst && (flags & kRenameExchange)) apply_hold(*dst, fx);
    sp.meta.mtime = sp.meta.ctime = dp.meta.mtime = dp.meta.ctime = now();
  }
  settle(std::move(fx));
  return Ok{};
}

Result<std::vector<DirEntry>> Volume::list(Ino ino) {
  std::lock_guard lk(tree_mu_);
  auto d = dir(ino);
  if (!d) return Errno{d.error()};
  std::vector<DirEntry> out;
  out.reserve((*d)->children.size());
  for (const auto& [name, child_ino] : (*d)->children) {
    NodePtr c = find(child_ino);
    if (c && c->retired) continue;  // delivered: gone for listings
    out.push_back(DirEntry{name, child_ino, c ? c->kind : Kind::Stream});
  }
  return out;
}

StatFs Volume::statfs() {
  StatFs s;
  s.capacity = limits_.max_memory;
  s.used = budget_.used();
  if (policy_.spill) {
    s.capacity += policy_.spill->limit();
    s.used += policy_.spill->budget().used();
  }
  std::lock_guard lk(tree_mu_);
  s.files = nodes_.size();
  return s;
}

std::size_t Volume::spill_used() const { return policy_.spill ? policy_.spill->budget().used() : 0; }
std::size_t Volume::spill_peak() const { return policy_.spill ? policy_.spill->budget().peak() : 0; }

}  // namespace capturefs::core
