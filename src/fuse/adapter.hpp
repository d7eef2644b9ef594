// The FUSE low-level front end of a core::Volume.
//
// This file and its .cpp are the only place that speaks FUSE: they turn
// requests into Volume calls and Volume results into replies. All state
// lives in the Volume; the adapter itself holds only the volume reference,
// reached through fuse_req_userdata(), so there is no global state.
#pragma once

#include <fuse_lowlevel.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/volume.hpp"

namespace capturefs::fuse {

class Adapter {
 public:
  explicit Adapter(core::Volume& v, std::vector<std::pair<std::string, std::string>> root_xattrs = {});
  /// Releases the handles the kernel never released (unmount while files
  /// were open), so their streams are freed.
  ~Adapter();
  Adapter(const Adapter&) = delete;
  Adapter& operator=(const Adapter&) = delete;

  /// \brief The operations table, built in one place.
  static const fuse_lowlevel_ops& ops();

  core::Volume& volume() { return vol_; }
  /// \brief The root's extended attributes (SessionOptions::root_xattrs).
  const std::vector<std::pair<std::string, std::string>>& root_xattrs() const { return root_xattrs_; }

  /// \brief Takes ownership of an open handle; the pointer goes in fi->fh.
  core::Handle* adopt(std::unique_ptr<core::Handle> h);
  /// \brief Gives ownership back, at release.
  std::unique_ptr<core::Handle> disown(core::Handle* h);

  /// \brief An open directory (a listing taken at opendir).
  struct DirHandle;
  /// \brief Keeps an open directory until release_dir() or teardown.
  DirHandle* adopt_dir(std::unique_ptr<DirHandle> d);
  void release_dir(DirHandle* d);

 private:
  core::Volume& vol_;
  const std::vector<std::pair<std::string, std::string>> root_xattrs_;
  // Leaf lock: held only to insert or erase, never across a Volume call;
  // taken with no other lock held.
  std::mutex handles_mu_;
  std::unordered_set<core::Handle*> handles_;
  std::unordered_map<DirHandle*, std::unique_ptr<DirHandle>> dirs_;  // same lock
};

}  // namespace capturefs::fuse
