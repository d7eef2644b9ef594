// What /proc says about a process: the few facts the core's rules need.
// Each call is a syscall or two: never call one with a core lock held.
#pragma once

#include <cstdint>

namespace capturefs::core {

/// \brief If thread `tid` is exiting because a signal killed its process,
/// that signal; else 0 (running, exiting normally, gone, or not readable).
/// Meant for a request the exiting thread itself is waiting on (the FLUSH
/// of a file its exit closes), when it is certainly still there.
int killed_by_signal(std::int32_t tid);

}  // namespace capturefs::core
