#include "cli/mount_opts.hpp"

#include <sys/stat.h>

#include <algorithm>

namespace capturefs::cli {

namespace {

bool is_subcommand(const std::string& s, const std::vector<std::string>& subs) {
  return std::find(subs.begin(), subs.end(), s) != subs.end();
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = s.find(',', start);
    std::string one = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!one.empty()) out.push_back(std::move(one));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

// Options that mount(8), mount.fuse3 or systemd use for themselves; they
// mean nothing to the file system (mount.fuse3 strips some of them itself).
bool for_mount_itself(const std::string& name) {
  static const char* const kNames[] = {"defaults", "_netdev", "nofail", "auto", "noauto", "user",
                                       "users",    "nouser",  "owner",  "group", "comment"};
  if (name.rfind("x-", 0) == 0) return true;
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return name == n; });
}

}  // namespace

const std::vector<std::string>& fuse_option_names() {
  // libfuse 3 (fuse_session_new and its mount options) and the generic
  // mount flags it passes to the kernel.
  static const std::vector<std::string> kNames = {
      "allow_other", "allow_root", "auto_unmount", "default_permissions", "fsname", "subtype",
      "max_read",    "blkdev",     "blksize",      "rootmode",            "context", "fscontext",
      "defcontext",  "rootcontext", "ro",          "rw",                  "suid",    "nosuid",
      "dev",         "nodev",      "exec",         "noexec",              "async",   "sync",
      "dirsync",     "atime",      "noatime",      "relatime",            "norelatime", "strictatime",
      "nostrictatime", "lazytime", "nolazytime",   "debug",               "max_threads", "clone_fd",
  };
  return kNames;
}

std::optional<std::vector<std::string>> helper_argv(const std::vector<std::string>& argv,
                                                     const std::vector<std::string>& subcommands) {
  if (argv.size() < 3) return std::nullopt;
  // The positionals: words that are neither options nor an option's value
  // (mount.fuse3 passes only -o VALUE; mount(8) may add -n, -v, -s, -f).
  std::vector<std::size_t> pos;
  for (std::size_t i = 1; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "-o") {
      ++i;
      continue;
    }
    if (a.size() > 1 && a[0] == '-') continue;
    pos.push_back(i);
  }
  if (pos.size() != 2 || pos[0] != 1) return std::nullopt;
  if (is_subcommand(argv[1], subcommands)) return std::nullopt;
  // A typo of a subcommand (`capturefs moutn /tmp/cap`) is not a source.
  if (!did_you_mean(argv[1], subcommands).empty()) return std::nullopt;
  struct stat st{};
  if (::stat(argv[pos[1]].c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
  std::vector<std::string> out = {argv[0], "mount", argv[pos[1]]};
  for (std::size_t i = 2; i < argv.size(); ++i) {
    if (i == pos[1]) continue;
    // mount(8)'s own flags: -n (no mtab), -v (verbose), -s (sloppy), -f (fake).
    if (argv[i] == "-n" || argv[i] == "-s" || argv[i] == "-f") continue;
    if (argv[i] == "-v") {
      out.push_back("--verbose");
      continue;
    }
    out.push_back(argv[i]);
  }
  return out;
}

std::optional<std::vector<std::string>> expand_o(const std::vector<std::string>& argv,
                                                 const std::vector<MountOptionSpec>& options,
                                                 std::string* error) {
  std::vector<std::string> out;
  std::vector<std::string> fuse;  // kept -o options, passed on as one -o
  const auto& fuse_names = fuse_option_names();
  for (std::size_t i = 0; i < argv.size(); ++i) {
    std::string list;
    if (argv[i] == "-o" && i + 1 < argv.size()) {
      list = argv[++i];
    } else if (argv[i].rfind("-o", 0) == 0 && argv[i].size() > 2 && argv[i][2] != '-') {
      list = argv[i].substr(2);
    } else if (argv[i] == "--") {
      out.insert(out.end(), argv.begin() + static_cast<std::ptrdiff_t>(i), argv.end());
      break;
    } else {
      out.push_back(argv[i]);
      continue;
    }
    for (const std::string& one : split_commas(list)) {
      const std::size_t eq = one.find('=');
      const std::string key = one.substr(0, eq);
      const bool has_value = eq != std::string::npos;
      std::string dashed = key;
      std::replace(dashed.begin(), dashed.end(), '_', '-');
      const auto spec = std::find_if(options.begin(), options.end(),
                                     [&](const MountOptionSpec& o) { return o.name == dashed; });
      const bool fuse_known = std::find(fuse_names.begin(), fuse_names.end(), key) != fuse_names.end();
      // `exec` alone is the generic mount flag; exec=CMD is --exec.
      if (spec != options.end() && (has_value || !spec->takes_value || !fuse_known)) {
        if (spec->takes_value && !has_value) {
          *error = "mount option '" + key + "' needs a value (" + key + "=...)";
          return std::nullopt;
        }
        if (!spec->takes_value && has_value) {
          *error = "mount option '" + key + "' takes no value (got '" + one + "')";
          return std::nullopt;
        }
        out.push_back("--" + dashed + (has_value ? "=" + one.substr(eq + 1) : std::string()));
      } else if (for_mount_itself(key)) {
        continue;
      } else if (fuse_known) {
        fuse.push_back(one);
      } else {
        *error = "unknown mount option '" + key + "'";
        std::vector<std::string> all;
        for (const auto& o : options) {
          std::string u = o.name;
          std::replace(u.begin(), u.end(), '-', '_');
          all.push_back(u);
        }
        all.insert(all.end(), fuse_names.begin(), fuse_names.end());
        if (const std::string near = did_you_mean(key, all); !near.empty())
          *error += "; did you mean '" + near + "'?";
        else
          *error += " (see 'capturefs mount --help': every long option works as -o name=value)";
        return std::nullopt;
      }
    }
  }
  if (!fuse.empty()) {
    std::string joined;
    for (const auto& f : fuse) joined += (joined.empty() ? "" : ",") + f;
    // Before a "--", if there is one.
    auto at = std::find(out.begin(), out.end(), std::string("--"));
    at = out.insert(at, "-o");
    out.insert(at + 1, joined);
  }
  return out;
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  // Optimal string alignment distance: a transposition ("moutn") is one edit.
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
      for (std::size_t j = 1; j <= b.size(); ++j) {
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
    return d[a.size()][b.size()];
  };
  std::string best;
  std::size_t best_d = ~std::size_t{0};
  for (const auto& c : candidates) {
    const std::size_t d = distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  const std::size_t limit = word.size() <= 4 ? 1 : 2;
  return best_d <= limit ? best : std::string();
}

}  // namespace capturefs::cli
