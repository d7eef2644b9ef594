// Internals of libcapturefs for the capturefs CLI (not installed, not part
// of the public API): the socket server needs the core Volume behind a Mount.
#pragma once

#include "capturefs/capturefs.hpp"

namespace capturefs::core {
class Volume;
}

namespace capturefs::detail {

struct MountAccess {
  /// \brief The volume a Mount serves; lives as long as the Mount.
  static core::Volume& volume(Mount& m);
};

}  // namespace capturefs::detail
