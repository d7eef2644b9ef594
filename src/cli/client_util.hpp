// Helpers the CLI's socket clients share (clients.cpp, status.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "proto/codec.hpp"

namespace capturefs::cli::util {

/// Writes all of `data` to fd; errno on failure, 0 on success.
int write_all(int fd, const void* data, std::size_t n);
/// "capturefs CMD: MSG" on stderr.
void complain(const char* cmd, const std::string& msg);
/// One line on stdout, flushed; false once stdout is gone.
bool print_line(std::string line);
const char* state_name(proto::StreamState s);
std::string num(std::uint64_t v);
const char* wait_name(proto::WaitReason w);
bool is_explicit_path(const std::string& n);
/// The socket and the stream path for NAME (`cat`, `peek`): a path in a
/// mount, or, with a socket given, a path relative to its mount root.
bool resolve_name(const char* cmd, const std::string& socket, const std::string& name, std::string* sock,
                  std::string* rel);
/// The socket and globs for `watch`/`take` ARGS: [MOUNT] [GLOB...].
bool resolve_globs(const char* cmd, const std::string& socket, const std::vector<std::string>& args,
                   std::string* sock, std::vector<std::string>* globs);
/// Seconds on a monotonic clock.
double now_s();

}  // namespace capturefs::cli::util
