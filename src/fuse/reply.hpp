// A move-only guard that answers one FUSE request exactly once.
//
// Every handler gets a Reply. Calling one of its methods sends the answer
// and disarms it; if a handler returns (or throws) without answering, the
// destructor answers EIO and logs it, so no request is ever left hanging.
// A handler that parks its request calls release(): from then on the core's
// completion callback owns the answer.
#pragma once

#include <fuse_lowlevel.h>

#include <cerrno>
#include <span>
#include <string>
#include <utility>

#include "core/log.hpp"

namespace capturefs::fuse {

class Reply {
 public:
  explicit Reply(fuse_req_t req) : req_(req) {}
  Reply(Reply&& o) noexcept : req_(std::exchange(o.req_, nullptr)) {}
  Reply& operator=(Reply&&) = delete;
  Reply(const Reply&) = delete;
  ~Reply() {
    if (req_ != nullptr) {
      log::error("internal: request left without a reply; answering EIO");
      fuse_reply_err(take(), EIO);
    }
  }

  fuse_req_t req() const { return req_; }
  /// \brief Gives up ownership without answering (the request was parked).
  fuse_req_t release() { return take(); }

  void err(int e) { fuse_reply_err(take(), e); }
  void ok() { fuse_reply_err(take(), 0); }
  void none() { fuse_reply_none(take()); }
  void attr(const struct stat& st, double timeout) { fuse_reply_attr(take(), &st, timeout); }
  void entry(const fuse_entry_param& e) { fuse_reply_entry(take(), &e); }
  void write(std::size_t n) { fuse_reply_write(take(), n); }
  void buf(std::span<const std::byte> b) {
    fuse_reply_buf(take(), reinterpret_cast<const char*>(b.data()), b.size());
  }
  void statfs(const struct statvfs& s) { fuse_reply_statfs(take(), &s); }
  void readlink(const std::string& target) { fuse_reply_readlink(take(), target.c_str()); }
  /// Returns false if the kernel no longer wanted the answer (the opener was
  /// interrupted); the caller must then undo the open itself.
  [[nodiscard]] bool open(const fuse_file_info& fi) { return fuse_reply_open(take(), &fi) == 0; }
  [[nodiscard]] bool create(const fuse_entry_param& e, const fuse_file_info& fi) {
    return fuse_reply_create(take(), &e, &fi) == 0;
  }

 private:
  fuse_req_t take() { return std::exchange(req_, nullptr); }
  fuse_req_t req_;
};

}  // namespace capturefs::fuse
