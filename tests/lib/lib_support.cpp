#include "lib_support.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <sstream>
#include <stdexcept>

namespace capturefs::test {

namespace {

// The writer processes. Content is random.Random(seed).randbytes(): cheap,
// deterministic, and different per file.
constexpr const char* kWriterPy = R"py(
import errno, hashlib, os, random, sys

def chunks(size, seed, block):
    rnd = random.Random(seed)
    left = size
    while left:
        n = min(block, left)
        yield rnd.randbytes(n)
        left -= n

def write_all(fd, b):
    view = memoryview(b)
    while view:
        view = view[os.write(fd, view):]

if sys.argv[1] == "files":
    root, args = sys.argv[2], sys.argv[3:]
    for i in range(0, len(args), 4):
        rel, size, seed, block = args[i], int(args[i + 1]), int(args[i + 2]), int(args[i + 3])
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        h = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        for b in chunks(size, seed, block):
            h.update(b)
            write_all(fd, b)
        os.close(fd)
        print(rel, size, h.hexdigest(), flush=True)
elif sys.argv[1] == "until-error":
    path, size, block, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    h = hashlib.sha256()
    done = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for b in chunks(size, seed, block):
            view = memoryview(b)
            while view:
                n = os.write(fd, view)
                done += n
                view = view[n:]
            h.update(b)
        os.close(fd)
    except OSError as e:
        print("ERROR", errno.errorcode.get(e.errno, str(e.errno)), done, flush=True)
        sys.exit(0)
    print("DONE", done, h.hexdigest(), flush=True)
    sys.exit(3)
)py";

}  // namespace

// ---------------------------------------------------------------- LibMount

LibMount::LibMount(capturefs::Options opt) : dir_("capturefs-lib") {
  mnt_ = dir_.at("mnt");
  if (::mkdir(mnt_.c_str(), 0755) != 0) throw std::runtime_error("mkdir " + mnt_ + ": " + errno_string(errno));
  opt.mountpoint = mnt_;
  mount_ = std::make_unique<capturefs::Mount>(opt);
}

LibMount::~LibMount() {
  mount_.reset();  // unmounts; the temp dir goes after
  if (is_mountpoint(mnt_)) ADD_FAILURE() << mnt_ << " is still mounted after ~Mount";
}

// ---------------------------------------------------------------- writers

Child start_writer(const std::string& root, const std::vector<FileSpec>& files) {
  std::vector<std::string> argv = {"python3", "-B", "-c", kWriterPy, "files", root};
  for (const auto& f : files) {
    argv.push_back(f.rel);
    argv.push_back(std::to_string(f.size));
    argv.push_back(std::to_string(f.seed));
    argv.push_back(std::to_string(f.block));
  }
  return Child::spawn(argv);
}

std::map<std::string, Written> parse_written(const std::string& out) {
  std::map<std::string, Written> m;
  std::istringstream in(out);
  std::string rel;
  Written w;
  while (in >> rel >> w.size >> w.sha256) m[rel] = w;
  return m;
}

Child start_writer_until_error(const std::string& path, std::uint64_t size, std::size_t block,
                               std::uint64_t seed) {
  return Child::spawn({"python3", "-B", "-c", kWriterPy, "until-error", path, std::to_string(size),
                       std::to_string(block), std::to_string(seed)});
}

std::string cat_file(const std::string& path, Millis timeout) {
  RunResult r = run({"cat", path}, timeout);
  if (!r.ok()) ADD_FAILURE() << "cat " << path << ": " << r.describe();
  return r.out;
}

// ---------------------------------------------------------------- Collector

Collector::Seen* Collector::find_locked(std::uint64_t id) {
  auto it = seen_.find(id);
  return it == seen_.end() ? nullptr : &it->second;
}

capturefs::Callbacks Collector::callbacks() {
  capturefs::Callbacks cb;
  cb.on_open = [this](const capturefs::StreamOpen& o) {
    std::lock_guard lk(mu_);
    if (seen_.contains(o.id)) problems_.push_back("on_open twice for id " + std::to_string(o.id));
    Seen& s = seen_[o.id];
    s.id = o.id;
    s.path = o.path;
    s.start_offset = o.start_offset;
    s.writer_pid = o.writer_pid;
    s.next = o.start_offset;
    cv_.notify_all();
  };
  cb.on_data = [this](const capturefs::Chunk& c) {
    if (before_data) before_data(c);
    Seen* s = nullptr;
    {
      std::lock_guard lk(mu_);
      s = find_locked(c.id);
      if (s == nullptr) {
        problems_.push_back("on_data before on_open for id " + std::to_string(c.id));
        return;
      }
      if (s->closed) problems_.push_back("on_data after on_close for " + s->path);
      if (c.offset != s->next) {
        s->in_order = false;
        problems_.push_back(s->path + ": chunk at " + std::to_string(c.offset) + ", expected " +
                            std::to_string(s->next));
      }
    }
    // Calls for one stream never overlap: its hash is ours alone here.
    s->hash->update(c.bytes);
    std::lock_guard lk(mu_);
    if (keep_data) s->data.append(reinterpret_cast<const char*>(c.bytes.data()), c.bytes.size());
    s->next = c.offset + c.bytes.size();
    s->bytes += c.bytes.size();
    cv_.notify_all();
  };
  cb.on_close = [this](const capturefs::StreamClose& e) {
    std::lock_guard lk(mu_);
    Seen* s = find_locked(e.id);
    if (s == nullptr) {
      problems_.push_back("on_close before on_open for id " + std::to_string(e.id));
      return;
    }
    if (s->closed) problems_.push_back("on_close twice for " + s->path);
    s->closed = true;
    s->end = e;
    s->sha256 = s->hash->hex();
    ++closed_;
    cv_.notify_all();
  };
  return cb;
}

bool Collector::wait_closed(std::size_t n, Millis timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return closed_ >= n; });
}

bool Collector::wait_bytes(const std::string& path, std::uint64_t n, Millis timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] {
    for (const auto& [id, s] : seen_)
      if (s.path == path && s.bytes >= n) return true;
    return false;
  });
}

bool Collector::wait(const std::function<bool(const std::map<std::uint64_t, Seen>&)>& pred, Millis timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return pred(seen_); });
}

std::map<std::string, Collector::Seen> Collector::by_path() const {
  std::lock_guard lk(mu_);
  std::map<std::string, Seen> m;
  for (const auto& [id, s] : seen_) m[s.path] = s;
  return m;
}

std::set<std::string> Collector::paths() const {
  std::lock_guard lk(mu_);
  std::set<std::string> out;
  for (const auto& [id, s] : seen_) out.insert(s.path);
  return out;
}

std::size_t Collector::closed() const {
  std::lock_guard lk(mu_);
  return closed_;
}

std::size_t Collector::opened() const {
  std::lock_guard lk(mu_);
  return seen_.size();
}

std::uint64_t Collector::bytes_of(const std::string& path) const {
  std::lock_guard lk(mu_);
  for (const auto& [id, s] : seen_)
    if (s.path == path) return s.bytes;
  return 0;
}

bool Collector::is_closed(const std::string& path) const {
  std::lock_guard lk(mu_);
  for (const auto& [id, s] : seen_)
    if (s.path == path) return s.closed;
  return false;
}

std::vector<std::string> Collector::problems() const {
  std::lock_guard lk(mu_);
  return problems_;
}

}  // namespace capturefs::test
