// The mount helper conventions of the capturefs command line, as pure
// functions over argument vectors (unit-tested in tests/cli):
//
// - `mount.fuse3` (`mount -t fuse.capturefs SOURCE DIR -o OPTS`, an fstab
//   line of type fuse.capturefs) runs `capturefs SOURCE DIR -o OPTS`:
//   helper_argv() turns that into `capturefs mount DIR -o OPTS`.
// - Every option of `capturefs mount` also works as `-o name[=value]`
//   (dashes as underscores: max_memory=64M, no_spill, hold=*.zip, ...),
//   mixed with the FUSE options in the same -o list: expand_o() moves
//   them out of the -o lists into long options, driven by the mount
//   subcommand's own option table, so every option added later works too.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace capturefs::cli {

/// \brief A long option of `capturefs mount`, as -o knows it.
struct MountOptionSpec {
  std::string name;       ///< "max-memory" (-o max_memory=...)
  bool takes_value = true;
};

/// \brief `argv` (argv[0] included) as mount.fuse3 passes it: two
/// positionals, SOURCE and a mountpoint, the first of them not a
/// subcommand. Returns the argv of `capturefs mount DIR ...` (SOURCE
/// dropped), or nullopt if `argv` is not such a call.
std::optional<std::vector<std::string>> helper_argv(const std::vector<std::string>& argv,
                                                     const std::vector<std::string>& subcommands);

/// \brief Rewrites the -o lists of a `capturefs mount` argv (argv[0] and
/// "mount" first): each `name[=value]` that names a mount option becomes
/// `--name[=value]`; options mount(8) and mount.fuse3 use for themselves
/// (x-*, comment=, defaults, _netdev, nofail, auto, noauto, user, users,
/// nouser, owner, group) are dropped; known FUSE and generic mount options
/// stay in -o. Anything else is an error naming the option: nullopt with
/// *error set.
std::optional<std::vector<std::string>> expand_o(const std::vector<std::string>& argv,
                                                 const std::vector<MountOptionSpec>& options,
                                                 std::string* error);

/// \brief The FUSE and generic mount options capturefs passes on to libfuse.
const std::vector<std::string>& fuse_option_names();

/// \brief The candidate closest to `word` by edit distance, if it is close
/// enough to be a likely typo ("moutn" -> "mount"); "" otherwise.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace capturefs::cli
