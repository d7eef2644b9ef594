#!/usr/bin/env bash
# Install what capturefs needs to build, test and run, from Debian 12's packages.
# Idempotent: when every package is already installed it does nothing
# (no apt-get update, no network).
set -euo pipefail

packages=(
  # build
  meson ninja-build pkgconf g++ clang
  # libraries
  libfuse3-dev libcli11-dev libfmt-dev
  # tests and sanitizers
  libgtest-dev libclang-rt-14-dev python3 libbenchmark-dev
  # run time: fusermount3 and /etc/fuse.conf
  fuse3
  # the real tools the compatibility suite (tests/compat) runs against a mount
  coreutils tar gzip xz-utils bzip2 zstd rsync curl openssl valgrind
  # ffmpeg: -movflags +faststart rereads its own output (tests/mount, never_hang)
  ffmpeg
  # the install test (tests/cli/test_install.py): man -l, pip offline in a venv
  man-db python3-setuptools python3-venv python3-pip
)

is_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
for pkg in "${packages[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "setup-deps: all ${#packages[@]} packages already installed"
else
  echo "setup-deps: installing ${missing[*]}"
  sudo=()
  if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "setup-deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  apt_opts=(-q -o DPkg::Lock::Timeout=300)
  "${sudo[@]}" apt-get "${apt_opts[@]}" update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"
  for pkg in "${missing[@]}"; do
    is_installed "$pkg" || { echo "setup-deps: $pkg is still not installed" >&2; exit 1; }
  done
fi

# Mounting needs the FUSE device; it cannot be installed with a package.
if [[ ! -c /dev/fuse ]]; then
  if ((EUID == 0)) && command -v modprobe >/dev/null 2>&1; then
    modprobe fuse 2>/dev/null || true
  fi
  if [[ ! -c /dev/fuse ]]; then
    echo "setup-deps: warning: /dev/fuse is missing; mounting (and the mount tests) will fail" >&2
  fi
fi
