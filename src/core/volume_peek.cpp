// Volume::peek: the first bytes of a stream, read without consuming them
// (`capturefs peek`, protocol PEEK). Apart from volume.cpp because it is
// one small feature of its own.
#include <algorithm>
#include <cerrno>

#include "core/stream.hpp"
#include "core/volume.hpp"

namespace capturefs::core {

Result<Volume::Peek> Volume::peek(std::string_view path, std::size_t size) {
  std::shared_ptr<Stream> s;
  Peek out;
  {
    std::lock_guard lk(tree_mu_);
    NodePtr n = find(kRootIno);
    std::size_t start = 0;
    while (n && start <= path.size()) {
      const std::size_t slash = path.find('/', start);
      const std::string_view name =
          path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
      if (name.empty() || n->kind != Kind::Directory) return Errno{ENOENT};
      auto c = child(*n, name);
      if (!c) return Errno{ENOENT};
      n = *c;
      if (slash == std::string_view::npos) break;
      start = slash + 1;
    }
    if (!n || !n->stream || !n->linked || n->retired) return Errno{ENOENT};
    s = n->stream;
    out.id = n->ino;
  }
  // No tree lock from here: read_back may read the spill file. A consumer
  // may move the first kept byte on meanwhile (EIO): then try again from
  // the new one.
  for (int attempt = 0; attempt < 8; ++attempt) {
    out.offset = s->kept().first;
    auto r = s->read_back(out.offset, size);
    if (!r) {
      if (r.error() == EIO && s->kept().first > out.offset) continue;
      return Errno{r.error()};
    }
    out.bytes.assign(r->begin(), r->end());
    out.written = std::max(s->kept().second, out.offset + out.bytes.size());
    return out;
  }
  return Errno{EAGAIN};
}

}  // namespace capturefs::core
