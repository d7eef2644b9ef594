// FUSE low-level operations for capturefs, grouped by concern:
// the error boundary, entries (names and attributes), stream I/O with
// parked requests, directories, and the calls we refuse on purpose.
//
// PARKED REQUESTS
// A read on an empty stream or a write that does not fit the memory limits
// is not allowed to block a worker thread (libfuse has about ten, and ten
// blocked handlers would freeze the mount). The core parks it with a
// callback that holds the raw fuse_req_t and answers it later. Parking is
// two-phase: after the core returns Parked we register the interrupt hook,
// then arm() the op. Until arm(), no other thread can answer the request, so
// fuse_req_interrupt_func() never touches a freed request. If the request
// was already interrupted, libfuse calls the hook synchronously inside
// fuse_req_interrupt_func() with its request lock held; answering there
// would free the request under libfuse's feet, so the hook only notes it
// (thread-local) and we cancel right after.

#include "fuse/adapter.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/log.hpp"
#include "core/proc.hpp"
#include "fuse/reply.hpp"

namespace capturefs::fuse {

struct Adapter::DirHandle {
  std::vector<core::DirEntry> entries;
  fuse_ino_t self = 0;
};

using core::Errno;
using core::Result;

namespace {

// Names: never cached. A stream's name may vanish when it is delivered, and
// a delivered name stays visible to its creating process only, so every
// lookup must reach us.
constexpr double kEntryTimeout = 0.0;
// Attributes: cached for a second. Nothing the kernel relies on goes stale:
// a write through the mount makes the kernel drop its cached size and
// mtime (so stat after a write always asks us), and chmod, chown, utimens
// and truncate go through setattr, whose reply refreshes the cache. What
// is cached is what the kernel checks permissions against (with
// default_permissions it would otherwise ask before every path walk and
// open: 5 of the 16 requests of a create-write-close-read cycle). What may
// lag by up to a second: st_nlink of a name the daemon dropped on its own,
// st_blocks (buffered bytes) after a consumer read, and stat of a dead
// mount's root (answered from the cache; `capturefs mount` and `umount`
// detect a dead mount with statfs, which always asks).
constexpr double kAttrTimeout = 1.0;

Adapter& self(fuse_req_t req) { return *static_cast<Adapter*>(fuse_req_userdata(req)); }
core::Volume& vol(fuse_req_t req) { return self(req).volume(); }
core::Handle& handle(const fuse_file_info* fi) {
  return *reinterpret_cast<core::Handle*>(static_cast<std::uintptr_t>(fi->fh));
}
core::WaitKey key_of(fuse_req_t req) { return reinterpret_cast<core::WaitKey>(req); }

// ---- The error boundary ------------------------------------------------------
// Every handler body runs inside checked(): the core reports errno values
// directly; anything thrown is mapped here, in one place.
template <class F>
void checked(fuse_req_t req, const char* op, F&& body) {
  Reply r(req);
  try {
    body(r);
  } catch (const std::bad_alloc&) {
    log::error("{}: out of memory", op);
    if (r.req() != nullptr) r.err(ENOMEM);
  } catch (const std::system_error& e) {
    log::error("{}: {}", op, e.what());
    if (r.req() != nullptr) r.err(e.code().value() > 0 ? e.code().value() : EIO);
  } catch (const std::exception& e) {
    log::error("{}: unexpected error: {}", op, e.what());
    if (r.req() != nullptr) r.err(EIO);
  }
}

// ---- Conversions ------------------------------------------------------------
mode_t type_bits(core::Kind k) {
  switch (k) {
    case core::Kind::Directory: return S_IFDIR;
    case core::Kind::Symlink: return S_IFLNK;
    case core::Kind::Stream: break;
  }
  return S_IFREG;
}

struct stat to_stat(const core::Attr& a) {
  struct stat st{};
  st.st_ino = a.ino;
  st.st_mode = type_bits(a.kind) | a.meta.mode;
  st.st_nlink = a.nlink;
  st.st_uid = a.meta.uid;
  st.st_gid = a.meta.gid;
  st.st_size = static_cast<off_t>(a.size);
  st.st_blocks = static_cast<blkcnt_t>(a.blocks);
  st.st_blksize = core::kBlockSize;
  st.st_atim = a.meta.atime;
  st.st_mtim = a.meta.mtime;
  st.st_ctim = a.meta.ctime;
  return st;
}

fuse_entry_param to_entry(const core::Attr& a) {
  fuse_entry_param e{};
  e.ino = a.ino;
  e.generation = 1;
  e.attr = to_stat(a);
  e.attr_timeout = kAttrTimeout;
  e.entry_timeout = kEntryTimeout;
  return e;
}

core::Caller caller(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  return core::Caller{c->uid, c->gid, c->pid};
}

void reply_entry(Reply& r, const Result<core::Attr>& a) {
  if (!a) return r.err(a.error());
  r.entry(to_entry(a.value()));
}

// ---- Parking ------------------------------------------------------------------
thread_local fuse_req_t tl_arming = nullptr;
thread_local bool tl_interrupted_early = false;

void on_interrupt(fuse_req_t req, void* data) {
  if (req == tl_arming) {  // called from inside fuse_req_interrupt_func()
    tl_interrupted_early = true;
    return;
  }
  static_cast<Adapter*>(data)->volume().cancel(key_of(req));
}

void arm(fuse_req_t req) {
  tl_arming = req;
  tl_interrupted_early = false;
  fuse_req_interrupt_func(req, on_interrupt, &self(req));
  tl_arming = nullptr;
  core::Volume& v = vol(req);
  if (tl_interrupted_early) v.cancel(key_of(req));  // marks it; arm() answers EINTR
  v.arm(key_of(req));
}

// ---- Lifecycle ------------------------------------------------------------------
void op_init(void* /*userdata*/, fuse_conn_info* conn) {
  // Streams bypass the page cache (direct_io per open file), so the
  // writeback cache would only reorder and delay bytes.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  conn->max_write = 1024 * 1024;
  conn->max_readahead = 0;
  log::debug("init: proto {}.{}, max_write {}", conn->proto_major, conn->proto_minor,
             conn->max_write);
}

// ---- Entries --------------------------------------------------------------------
void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  checked(req, "lookup",
          [&](Reply& r) { reply_entry(r, vol(req).lookup(parent, name, caller(req).pid)); });
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  vol(req).forget(ino, n);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* list) {
  for (size_t i = 0; i < count; ++i) vol(req).forget(list[i].ino, list[i].nlookup);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  checked(req, "getattr", [&](Reply& r) {
    auto a = vol(req).getattr(ino);
    if (!a) return r.err(a.error());
    r.attr(to_stat(a.value()), kAttrTimeout);
  });
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                fuse_file_info* /*fi*/) {
  checked(req, "setattr", [&](Reply& r) {
    core::SetAttr sa;
    sa.set_mode = (to_set & FUSE_SET_ATTR_MODE) != 0;
    sa.mode = attr->st_mode;
    sa.set_uid = (to_set & FUSE_SET_ATTR_UID) != 0;
    sa.uid = attr->st_uid;
    sa.set_gid = (to_set & FUSE_SET_ATTR_GID) != 0;
    sa.gid = attr->st_gid;
    sa.set_size = (to_set & FUSE_SET_ATTR_SIZE) != 0;
    sa.size = static_cast<std::uint64_t>(attr->st_size);
    const timespec t = core::now();
    sa.set_atime = (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW)) != 0;
    sa.atime = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? t : attr->st_atim;
    sa.set_mtime = (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) != 0;
    sa.mtime = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? t : attr->st_mtim;
    auto a = vol(req).setattr(ino, sa);
    if (!a) return r.err(a.error());
    r.attr(to_stat(a.value()), kAttrTimeout);
  });
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  checked(req, "mkdir",
          [&](Reply& r) { reply_entry(r, vol(req).mkdir(parent, name, mode, caller(req))); });
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t /*rdev*/) {
  checked(req, "mknod", [&](Reply& r) {
    // Only regular files exist here: never a FIFO, socket or device node.
    if (!S_ISREG(mode)) return r.err(EPERM);
    reply_entry(r, vol(req).mknod(parent, name, mode, caller(req)));
  });
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  checked(req, "symlink", [&](Reply& r) {
    reply_entry(r, vol(req).symlink(parent, name, target, caller(req)));
  });
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  checked(req, "readlink", [&](Reply& r) {
    auto t = vol(req).readlink(ino);
    if (!t) return r.err(t.error());
    r.readlink(t.value());
  });
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  checked(req, "unlink", [&](Reply& r) { r.err(vol(req).unlink(parent, name).error()); });
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  checked(req, "rmdir", [&](Reply& r) { r.err(vol(req).rmdir(parent, name).error()); });
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned int flags) {
  checked(req, "rename", [&](Reply& r) {
    unsigned f = 0;
    if (flags & RENAME_NOREPLACE) f |= core::kRenameNoReplace;
    if (flags & RENAME_EXCHANGE) f |= core::kRenameExchange;
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return r.err(EINVAL);
    r.err(vol(req).rename(parent, name, newparent, newname, f).error());
  });
}

void op_statfs(fuse_req_t req, fuse_ino_t /*ino*/) {
  checked(req, "statfs", [&](Reply& r) {
    const core::StatFs s = vol(req).statfs();
    struct statvfs st{};
    st.f_bsize = 4096;
    st.f_frsize = 4096;
    st.f_blocks = s.capacity / 4096;
    st.f_bfree = st.f_bavail = (s.capacity - std::min(s.used, s.capacity)) / 4096;
    st.f_files = s.files + 1000000;
    st.f_ffree = st.f_favail = 1000000;
    st.f_namemax = 255;
    r.statfs(st);
  });
}

// ---- Stream I/O -----------------------------------------------------------------
void set_open_flags(fuse_req_t req, fuse_file_info* fi, std::unique_ptr<core::Handle> h) {
  // direct_io: every read and write reaches us, in order, unbuffered. The
  // file stays seekable so that lseek(SEEK_CUR/SEEK_END) answers.
  fi->direct_io = 1;
  fi->keep_cache = 0;
  // A writer's FLUSH does nothing (a stream ends at its last RELEASE), so
  // close(2) need not wait for one: a request fewer per written file. A
  // reader's is kept: at EOF it drops the name before close returns.
  // A writer of a held file keeps its FLUSH: it tells whether the writer
  // was killed (op_flush), so that a cut file is not delivered as whole.
  fi->noflush = h->role == core::Role::Writer && !h->watch_exit ? 1 : 0;
  fi->fh = reinterpret_cast<std::uintptr_t>(self(req).adopt(std::move(h)));
}

void release_handle(fuse_req_t req, const fuse_file_info* fi) {
  vol(req).release(self(req).disown(&handle(fi)));
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  checked(req, "create", [&](Reply& r) {
    core::Volume& v = vol(req);
    auto c = v.create(parent, name, mode, fi->flags, caller(req));
    if (!c) return r.err(c.error());
    const fuse_entry_param e = to_entry(c->attr);
    set_open_flags(req, fi, std::move(c->handle));
    if (!r.create(e, *fi)) {  // the creator went away: undo
      release_handle(req, fi);
      v.forget(e.ino, 1);
    }
  });
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  checked(req, "open", [&](Reply& r) {
    core::Volume& v = vol(req);
    auto h = v.open(ino, fi->flags, caller(req));
    if (!h) return r.err(h.error());
    set_open_flags(req, fi, std::move(h.value()));
    if (!r.open(*fi)) release_handle(req, fi);
  });
}

// An operation's result, sent by `send` (failures as their errno).
template <class T, class Send>
void send_result(Reply& r, const Result<T>& res, Send send) {
  if (!res) return r.err(res.error());
  send(r, res.value());
}

// The completion of a parked operation: answers the raw request later.
template <class T, class Send>
std::function<void(Result<T>)> later(fuse_req_t req, Send send) {
  return [req, send](Result<T> res) {
    Reply late(req);
    send_result(late, res, send);
  };
}

template <class T, class Send>
void answer_or_park(Reply& r, const core::Outcome<T>& out, Send send) {
  if (std::holds_alternative<core::Parked>(out)) return arm(r.release());
  send_result(r, std::get<0>(out), send);
}

constexpr auto send_bytes = [](Reply& r, std::span<const std::byte> b) { r.buf(b); };
constexpr auto send_count = [](Reply& r, std::size_t n) { r.write(n); };

void op_read(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  checked(req, "read", [&](Reply& r) {
    answer_or_park(r,
                   vol(req).read(handle(fi), static_cast<std::uint64_t>(off), size, key_of(req),
                                 later<std::span<const std::byte>>(req, send_bytes)),
                   send_bytes);
  });
}

void op_write(fuse_req_t req, fuse_ino_t /*ino*/, const char* buf, size_t size, off_t off,
              fuse_file_info* fi) {
  checked(req, "write", [&](Reply& r) {
    answer_or_park(r,
                   vol(req).write(handle(fi), static_cast<std::uint64_t>(off),
                                  {reinterpret_cast<const std::byte*>(buf), size}, key_of(req),
                                  later<std::size_t>(req, send_count)),
                   send_count);
  });
}

void op_flush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  // close(2) waits for this reply (RELEASE comes later, asynchronously), so
  // a delivered stream's name is dropped here to be gone when close returns.
  checked(req, "flush", [&](Reply& r) {
    core::Handle& h = handle(fi);
    if (h.watch_exit) {
      // A held file's writer: a FLUSH from a thread whose process is being
      // killed comes from its exit closing the file. The file is cut short
      // and must not be delivered as complete. The thread waits for this
      // reply, so /proc still has it.
      const auto pid = caller(req).pid;
      if (const int sig = core::killed_by_signal(pid); sig != 0) {
        const char* name = sigabbrev_np(sig);
        std::string why = fmt::format("its writer (pid {}) was killed by SIG{} while it had the file open",
                                      pid, name != nullptr ? name : std::to_string(sig));
        log::warn("{}: {}: delivered as incomplete", vol(req).path_of(h.ino), why);
        vol(req).abort(h, std::move(why));
      }
    }
    vol(req).flush(h);
    r.ok();
  });
}

void op_fsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* /*fi*/) {
  fuse_reply_err(req, 0);  // nothing to make durable: bytes live until consumed
}

void op_release(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  checked(req, "release", [&](Reply& r) {
    release_handle(req, fi);
    r.ok();
  });
}

// ---- Directories ----------------------------------------------------------------
using DirHandle = Adapter::DirHandle;

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  checked(req, "opendir", [&](Reply& r) {
    // A snapshot taken at open keeps offsets stable while names change.
    auto l = vol(req).list(ino);
    if (!l) return r.err(l.error());
    auto d = std::make_unique<DirHandle>();
    d->entries = std::move(l.value());
    d->self = ino;
    DirHandle* h = self(req).adopt_dir(std::move(d));
    fi->fh = reinterpret_cast<std::uintptr_t>(h);
    if (!r.open(*fi)) self(req).release_dir(h);
  });
}

void op_readdir(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  checked(req, "readdir", [&](Reply& r) {
    const auto& d = *reinterpret_cast<DirHandle*>(static_cast<std::uintptr_t>(fi->fh));
    std::vector<char> buf(size);
    std::size_t used = 0;
    const std::size_t total = d.entries.size() + 2;
    for (auto i = static_cast<std::size_t>(off); i < total; ++i) {
      struct stat st{};
      const char* name = nullptr;
      if (i < 2) {
        name = i == 0 ? "." : "..";
        st.st_ino = d.self;
        st.st_mode = S_IFDIR;
      } else {
        const core::DirEntry& e = d.entries[i - 2];
        name = e.name.c_str();
        st.st_ino = e.ino;
        st.st_mode = type_bits(e.kind);
      }
      const std::size_t n = fuse_add_direntry(req, buf.data() + used, size - used, name, &st,
                                              static_cast<off_t>(i + 1));
      if (n > size - used) break;
      used += n;
    }
    r.buf({reinterpret_cast<const std::byte*>(buf.data()), used});
  });
}

void op_releasedir(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  self(req).release_dir(reinterpret_cast<DirHandle*>(static_cast<std::uintptr_t>(fi->fh)));
  fuse_reply_err(req, 0);
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* /*fi*/) {
  fuse_reply_err(req, 0);
}

// ---- Refused on purpose -----------------------------------------------------------
// Extended attributes are uniformly unsupported: answering one way for set
// and another for remove makes `cp -a` fail half-way. The one exception is
// read-only: the root's own attributes (the daemon's socket path,
// `user.capturefs.socket`, for `capturefs status DIR`) can be read and
// listed. Everything else, on the root too, is ENOTSUP.
void op_setxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) {
  fuse_reply_err(req, ENOTSUP);
}
// getxattr/listxattr protocol: size 0 asks for the length; a buffer too small is ERANGE.
void reply_xattr(fuse_req_t req, const std::string& value, size_t size) {
  if (size == 0) {
    fuse_reply_xattr(req, value.size());
  } else if (size < value.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}
// Besides those, the root's `user.capturefs.pid` names the daemon (asked
// at each call: a daemon forks into the background after mounting), so
// that `capturefs umount` can wait for it to finish its deliveries.
constexpr std::string_view kPidXattr = "user.capturefs.pid";

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (ino == FUSE_ROOT_ID && name == kPidXattr) return reply_xattr(req, std::to_string(::getpid()), size);
  if (ino == FUSE_ROOT_ID) {
    for (const auto& [n, v] : self(req).root_xattrs())
      if (n == name) {
        reply_xattr(req, v, size);
        return;
      }
  }
  fuse_reply_err(req, ENOTSUP);
}
void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTSUP);
    return;
  }
  std::string names(kPidXattr);
  names.push_back('\0');
  for (const auto& [n, v] : self(req).root_xattrs()) names.append(n).push_back('\0');
  reply_xattr(req, names, size);
}
void op_removexattr(fuse_req_t req, fuse_ino_t, const char*) { fuse_reply_err(req, ENOTSUP); }
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { fuse_reply_err(req, EPERM); }
void op_fallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) {
  fuse_reply_err(req, EOPNOTSUPP);
}

}  // namespace

Adapter::~Adapter() {
  // Unmounted with files still open: the kernel will not release them. A
  // stream still open for writing did not end normally, and says so.
  for (core::Handle* h : handles_) {
    if (h->role == core::Role::Writer) vol_.abort(*h, "unmounted while a writer had it open");
    vol_.release(std::unique_ptr<core::Handle>(h));
  }
}

Adapter::Adapter(core::Volume& v, std::vector<std::pair<std::string, std::string>> root_xattrs)
    : vol_(v), root_xattrs_(std::move(root_xattrs)) {}

Adapter::DirHandle* Adapter::adopt_dir(std::unique_ptr<DirHandle> d) {
  std::lock_guard lk(handles_mu_);
  DirHandle* p = d.get();
  dirs_.emplace(p, std::move(d));
  return p;
}

void Adapter::release_dir(DirHandle* d) {
  std::unique_ptr<DirHandle> gone;  // freed after the lock is released
  std::lock_guard lk(handles_mu_);
  if (auto it = dirs_.find(d); it != dirs_.end()) {
    gone = std::move(it->second);
    dirs_.erase(it);
  }
}

core::Handle* Adapter::adopt(std::unique_ptr<core::Handle> h) {
  std::lock_guard lk(handles_mu_);
  handles_.insert(h.get());
  return h.release();
}

std::unique_ptr<core::Handle> Adapter::disown(core::Handle* h) {
  std::lock_guard lk(handles_mu_);
  handles_.erase(h);
  return std::unique_ptr<core::Handle>(h);
}

const fuse_lowlevel_ops& Adapter::ops() {
  static const fuse_lowlevel_ops table = [] {
    fuse_lowlevel_ops o{};
    o.init = op_init;
    o.lookup = op_lookup;
    o.forget = op_forget;
    o.forget_multi = op_forget_multi;
    o.getattr = op_getattr;
    o.setattr = op_setattr;
    o.mknod = op_mknod;
    o.mkdir = op_mkdir;
    o.unlink = op_unlink;
    o.rmdir = op_rmdir;
    o.symlink = op_symlink;
    o.readlink = op_readlink;
    o.rename = op_rename;
    o.link = op_link;
    o.open = op_open;
    o.create = op_create;
    o.read = op_read;
    o.write = op_write;
    o.flush = op_flush;
    o.release = op_release;
    o.fsync = op_fsync;
    o.opendir = op_opendir;
    o.readdir = op_readdir;
    o.releasedir = op_releasedir;
    o.fsyncdir = op_fsyncdir;
    o.statfs = op_statfs;
    o.setxattr = op_setxattr;
    o.getxattr = op_getxattr;
    o.listxattr = op_listxattr;
    o.removexattr = op_removexattr;
    o.fallocate = op_fallocate;
    return o;
  }();
  return table;
}

}  // namespace capturefs::fuse
