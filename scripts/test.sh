#!/usr/bin/env bash
# The one test command: install the dependencies, build, and run every test
# suite (unit, mount, faults, compat) three times: in a normal build with
# -Dwerror=true (plus the bench smoke check and valgrind on two mount
# suites), in an ASan+UBSan build, and in a TSan build.
#
#   scripts/test.sh              all three builds
#   scripts/test.sh --no-asan    normal build only (no ASan/UBSan, no TSan)
#   scripts/test.sh --asan-only  sanitizer builds only (ASan+UBSan, TSan)
#
# Environment: JOBS (compile jobs, default: nproc), TEST_JOBS (tests run at
# once, default 2), MESON_TEST_ARGS (extra arguments for meson test, e.g.
# "--suite unit"). Exits non-zero if any step fails.
set -euo pipefail

usage() {
  sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

run_normal=1
run_asan=1
while (($#)); do
  case "$1" in
    --no-asan) run_asan=0 ;;
    --asan-only) run_normal=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if ((!run_normal && !run_asan)); then
  echo "test.sh: --no-asan and --asan-only together leave nothing to run" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
test_jobs=${TEST_JOBS:-2}
read -r -a extra_test_args <<<"${MESON_TEST_ARGS:-}"
started=$SECONDS

summary=()
failed=0
total_pass=0
total_fail=0
total_skip=0

header() {
  printf '\n==================== %s  [%s, +%ds] ====================\n' \
    "$*" "$(date +%H:%M:%S)" "$((SECONDS - started))"
}

# record NAME STATUS: remember a step's outcome for the closing summary.
record() {
  summary+=("$(printf '%-34s %s' "$1" "$2")")
  [[ "$2" == ok ]] || failed=1
}

# configure DIR MESON-OPTIONS...: set up DIR, or reconfigure it if it exists.
configure() {
  local dir=$1
  shift
  if [[ -f "$dir/meson-private/coredata.dat" ]]; then
    meson setup --reconfigure "$dir" "$@" ||
      meson setup --wipe "$dir" "$@"
  else
    meson setup "$dir" "$@"
  fi
}

# count_results DIR: print "passed failed skipped" for DIR's last meson test.
# Counts GoogleTest cases where meson reports them (tests with protocol
# 'gtest'), and each other test as one.
count_results() {
  python3 - "$1/meson-logs" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
logs = sys.argv[1]
passed = failed = skipped = 0
try:
    for case in ET.parse(os.path.join(logs, "testlog.junit.xml")).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
except (OSError, ET.ParseError):
    pass
# A test that crashed or timed out may have reported no failing case.
failed_tests = 0
try:
    with open(os.path.join(logs, "testlog.json")) as f:
        for line in f:
            if line.strip() and json.loads(line).get("result") not in (
                    "OK", "SKIP", "EXPECTEDFAIL"):
                failed_tests += 1
except OSError:
    pass
print(passed, max(failed, failed_tests), skipped)
PY
}

# clean_stale_results DIR: remove the logs of DIR's previous meson test,
# including each gtest-protocol test's XML, which a crashing test would
# otherwise leave in place to be counted again.
clean_stale_results() {
  rm -f "$1/meson-logs/testlog.json" "$1/meson-logs/testlog.junit.xml"
  meson introspect --tests "$1" 2>/dev/null | python3 -c '
import json, os, sys
build = sys.argv[1]
try:
    tests = json.load(sys.stdin)
except ValueError:
    tests = []
for t in tests:
    if t.get("protocol") == "gtest":
        xml = os.path.join(build, t.get("workdir") or "", t["name"] + ".xml")
        if os.path.isfile(xml):
            os.remove(xml)
' "$1" || true
}

# build_and_test LABEL DIR TEST-ARGS... -- MESON-OPTIONS...
build_and_test() {
  local label=$1 dir=$2
  shift 2
  local test_args=()
  while (($#)) && [[ "$1" != -- ]]; do
    test_args+=("$1")
    shift
  done
  shift # --

  compiled=0
  header "$label: configure $dir"
  if ! configure "$dir" "$@"; then
    record "$label: configure" FAILED
    return
  fi
  record "$label: configure" ok

  header "$label: compile $dir"
  if ! meson compile -C "$dir" -j "$jobs"; then
    record "$label: compile" FAILED
    return
  fi
  record "$label: compile" ok
  compiled=1

  header "$label: test $dir"
  clean_stale_results "$dir"
  local rc=0
  meson test -C "$dir" --print-errorlogs --num-processes "$test_jobs" \
    "${test_args[@]}" "${extra_test_args[@]}" || rc=$?
  local passed failed_n skipped
  read -r passed failed_n skipped < <(count_results "$dir")
  total_pass=$((total_pass + passed))
  total_fail=$((total_fail + failed_n))
  total_skip=$((total_skip + skipped))
  local counts="$passed passed, $failed_n failed, $skipped skipped"
  if ((rc != 0)); then
    record "$label: test" "FAILED (meson test exit $rc; $counts)"
  elif ((passed + failed_n == 0)); then
    record "$label: test" "FAILED (no test ran)"
  else
    record "$label: test" ok
    summary[-1]+=" ($counts)"
  fi
}

header "setup-deps"
if bash scripts/setup-deps.sh; then
  record "setup-deps" ok
  compiled=1
else
  record "setup-deps" FAILED
  compiled=0
fi

if ((compiled && run_normal)); then
  build_and_test "normal" build -- -Dwerror=true
fi

# The benchmark harness, as a smoke check that it still runs (tiny sizes;
# the numbers mean nothing here and are not judged).
if ((compiled && run_normal)); then
  header "bench --quick (smoke)"
  if scripts/bench --quick --no-build > /tmp/capturefs-bench-quick.log 2>&1; then
    record "bench --quick" ok
  else
    tail -n 30 /tmp/capturefs-bench-quick.log
    record "bench --quick" FAILED
  fi
fi

# valgrind memcheck on the daemon of two integration suites (the daemon
# runs under valgrind through the test fixture; an error or a definite leak
# makes it exit 99, which fails the test at unmount). Process-exit watching
# (pidfd_open) does not exist under valgrind 3.19, so suites that test it
# are left out.
if ((compiled && run_normal)); then
  header "valgrind: mount_semantics mount_socket"
  if CAPTUREFS_DAEMON_WRAPPER="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
    meson test -C build --no-rebuild --timeout-multiplier 3 mount_semantics mount_socket \
      > /tmp/capturefs-valgrind.log 2>&1; then
    record "valgrind (2 mount suites)" ok
  else
    tail -n 40 /tmp/capturefs-valgrind.log
    grep -n -B2 -A12 "Failure" build/meson-logs/testlog.txt | tail -n 60 || true
    record "valgrind (2 mount suites)" FAILED
  fi
fi

# A failing test in the normal build does not stop the sanitizer run (its
# reports help); a build that does not compile does.
if ((run_asan && !compiled)); then
  record "asan+ubsan" "SKIPPED (an earlier step failed)"
elif ((run_asan)); then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  # The long tests run in full in the normal build; the sanitizer builds run
  # the same code paths on less, in CI time: a tenth of the million files,
  # 512 MiB of the 2 GiB spill, 4 s of the 10 s soak, 50 of the 200 seed
  # recipe calls, 4 of the 16 random spill interleavings.
  export CAPTUREFS_MILLION=100000
  export CAPTUREFS_SPILL_TEST_SIZE=512M
  export CAPTUREFS_SOAK_SECONDS=4
  export CAPTUREFS_SEED_CALLS=50
  export CAPTUREFS_SPILL_SEEDS=4
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  build_and_test "asan+ubsan" build-asan --timeout-multiplier 3 -- \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
fi

# ThreadSanitizer on the whole suite: the core's delivery threads and parked
# operations in the unit tests, and the daemon (FUSE workers, socket
# connections, --exec runners, the exit watch) under the mount tests.
# libfuse itself is not instrumented; its locks are seen through the
# pthread interceptors.
if ((run_asan && compiled)); then
  export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
  build_and_test "tsan" build-tsan --timeout-multiplier 5 -- \
    -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug
fi

header "summary"
printf '%s\n' "${summary[@]}"
echo "elapsed: $((SECONDS - started))s"
echo "tests: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$failed"
