#!/usr/bin/env bash
# Install the dependencies, build capturefs, and show it at work on a real
# mount: tools write files into it, readers stream them back out, and nothing
# lands on the real filesystem. Cleans up (unmount, temp dir) even on failure.
#
# Environment: JOBS (compile jobs, default: nproc), DEMO_TIMEOUT (seconds
# before a hung demo is aborted, default 120).
set -euo pipefail
shopt -s lastpipe # the last part of a pipeline runs in this shell

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
timeout_s=${DEMO_TIMEOUT:-120}
bin=$root/build/capturefs

step() { printf '\n==== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
now() { date +%H:%M:%S.%3N; }

step "setup-deps"
bash scripts/setup-deps.sh

step "build"
if [[ ! -f build/meson-private/coredata.dat ]]; then
  meson setup build
fi
meson compile -C build -j "$jobs"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/capturefs-demo.XXXXXX")
mnt=$tmp/mnt
mkdir "$mnt"
pids=()

is_mounted() { findmnt -rn --mountpoint "$mnt" >/dev/null 2>&1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null
  done
  if is_mounted; then
    "$bin" umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null ||
      fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  fi
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null
  done
  if is_mounted; then
    echo "demo: could not unmount $mnt; left $tmp in place" >&2
    rc=1
  else
    rm -rf "$tmp"
  fi
  if ((rc == 0)); then
    printf '\n==== demo finished: all steps succeeded\n'
  else
    printf '\n==== demo FAILED (exit %d)\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Watchdog: if the demo hangs on the mount (a bug), abort the FUSE connection
# so every pending request fails and the script ends through cleanup.
abort_connection() {
  local majmin dev
  majmin=$(findmnt -rn -o MAJ:MIN --mountpoint "$mnt" 2>/dev/null) || return 0
  dev=${majmin#*:}
  if [[ ! -d /sys/fs/fuse/connections/$dev ]]; then
    mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
  fi
  echo 1 >"/sys/fs/fuse/connections/$dev/abort" 2>/dev/null || true
}
(
  sleeper=
  trap '[[ -n "$sleeper" ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
  sleep "$timeout_s" &
  sleeper=$!
  wait "$sleeper"
  echo "demo: still running after ${timeout_s}s; aborting the FUSE connection" >&2
  abort_connection
) &
pids+=("$!")

step "mount"
show "capturefs mount $mnt"
"$bin" mount "$mnt"
is_mounted || { echo "demo: $mnt is not mounted" >&2; exit 1; }
findmnt --mountpoint "$mnt"

step "1. a real tool writes a file (more than a pipe's 64 KiB) before anyone reads it"
show "seq 1 200000 | gzip -c > $mnt/numbers.gz"
seq 1 200000 | gzip -c >"$mnt/numbers.gz"
show "python3 -c '...json.dump(...)' $mnt/report.json"
python3 -c '
import json, sys
with open(sys.argv[1], "w") as f:
    json.dump({"tool": "python3", "rows": 3, "values": [1, 2, 3]}, f)
    f.write("\n")
' "$mnt/report.json"

step "2. they are regular files with a size, as tools expect"
show "ls -l $mnt"
ls -l "$mnt"
show "stat -c '%n: %F, %s bytes, block size %o' ..."
stat -c '%n: %F, %s bytes, block size %o' "$mnt/numbers.gz" "$mnt/report.json"
[[ -f "$mnt/numbers.gz" ]] || { echo "demo: numbers.gz is not a regular file" >&2; exit 1; }
expected_size=$(seq 1 200000 | gzip -c | wc -c)
actual_size=$(stat -c %s "$mnt/numbers.gz")
if [[ "$actual_size" != "$expected_size" ]]; then
  echo "demo: numbers.gz is $actual_size bytes, expected $expected_size" >&2
  exit 1
fi
echo "numbers.gz size matches gzip's output: $expected_size bytes"

step "3. read them back through the mount (each byte is freed once read)"
show "gunzip -c < $mnt/numbers.gz | tail -n 3"
numbers=$(gunzip -c <"$mnt/numbers.gz")
tail -n 3 <<<"$numbers"
if [[ "$numbers" != "$(seq 1 200000)" ]]; then
  echo "demo: numbers.gz did not read back as seq 1 200000" >&2
  exit 1
fi
echo "all 200000 lines read back intact"
show "cat $mnt/report.json"
report=$(cat "$mnt/report.json")
printf '%s\n' "$report"
python3 -c 'import json, sys; assert json.loads(sys.argv[1])["rows"] == 3' "$report"
show "ls -l $mnt   # a stream read to the end and closed is gone"
ls -l "$mnt"
if [[ -e "$mnt/numbers.gz" || -e "$mnt/report.json" ]]; then
  echo "demo: a fully read stream is still listed" >&2
  exit 1
fi

step "4. a reader opened while the writer is still writing streams the data"
show "for i in 1 2 3 4 5; do echo \"line \$i ...\"; sleep 0.5; done > $mnt/slow.log &   # writer"
{
  for i in 1 2 3 4 5; do
    echo "line $i, written at $(now)"
    sleep 0.5
  done
} >"$mnt/slow.log" &
writer=$!
pids+=("$writer")
for _ in $(seq 100); do
  [[ -e "$mnt/slow.log" ]] && break
  sleep 0.05
done
show "cat $mnt/slow.log   # reader, started at $(now)"
# cat, not bash's read on the file: read on a regular file seeks back after
# each line, and a stream cannot give back bytes it has already handed out.
lines=0
# shellcheck disable=SC2002
cat "$mnt/slow.log" | while IFS= read -r line; do
  echo "  read at $(now): $line"
  lines=$((lines + 1))
done
wait "$writer"
if ((lines != 5)); then
  echo "demo: the reader got $lines lines, expected 5" >&2
  exit 1
fi
echo "the reader saw each line as it was written and ended when the writer closed"

step "umount"
show "capturefs umount $mnt"
"$bin" umount "$mnt"
if is_mounted; then
  echo "demo: $mnt is still mounted" >&2
  exit 1
fi
show "ls -A $mnt   # the directory underneath: no FIFO, socket or temp file"
leftovers=$(ls -A "$mnt")
if [[ -n "$leftovers" ]]; then
  printf '%s\n' "$leftovers"
  echo "demo: files were left on the real filesystem" >&2
  exit 1
fi
echo "(empty)"
