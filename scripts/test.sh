#!/usr/bin/env bash
# The one test command: install the dependencies, build, and run the tests,
# in one of two tiers.
#
#   scripts/test.sh              CI tier (what .ci/run runs):
#                                - the normal build (-Dwerror=true) with
#                                  every suite (unit, mount, faults, socket,
#                                  fuzzing corpus replay, compat), then the
#                                  bench --quick smoke check;
#                                - an ASan+UBSan and a TSan build that
#                                  compile and run only suite 'sanitize'
#                                  (the C++ unit tests, mount_faults,
#                                  mount_semantics, mount_exec and the
#                                  socket tests; see tests/meson.build).
#                                The long tests run at CI sizes in all three.
#   scripts/test.sh --full       release tier, run before each release:
#                                every suite in all three builds, the long
#                                tests at full size in the normal build
#                                (2 GiB spill, a million files, the 10 s
#                                soak, 200 seed calls, 16 spill
#                                interleavings), valgrind on two mount
#                                suites.
#   --no-asan                    normal build only (no ASan/UBSan, no TSan)
#   --asan-only                  sanitizer builds only (ASan+UBSan, TSan)
#
# Time on a 2-vCPU machine, from a clean clone with the dependencies
# installed (measured while 2-3 other builds shared the machine, so the
# figures are pessimistic):
#   CI tier:  27 min at load average 8-15: normal compile 11 min, its tests
#             3.6 min, bench 22 s, ASan+UBSan compile 3.9 min, its tests
#             2.7 min beside the TSan compile (5.1 min), TSan tests 3.3 min.
#             At load ~4 the normal compile took 4.3 min and its tests
#             2.4 min. Unloaded, about 11 min (an estimate from these).
#   --full:   not measured since the split; it is the matrix CI ran before,
#             which took about 20 min unloaded.
#
# Environment: JOBS (compile jobs, default 2), TEST_JOBS (tests run at
# once, default 2), MESON_TEST_ARGS (extra arguments for meson test, e.g.
# "--suite unit"), OVERLAP=0 (compile the TSan build after the ASan+UBSan
# tests instead of while they run). CAPTUREFS_MILLION,
# CAPTUREFS_SPILL_TEST_SIZE, CAPTUREFS_SOAK_SECONDS, CAPTUREFS_SEED_CALLS
# and CAPTUREFS_SPILL_SEEDS, when set, override the tier's sizes. The logs
# of the steps that are not meson's own go to build/ci-logs/. Exits
# non-zero if any step fails; the last line is
# "tests: N passed, N failed, N skipped".
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

run_normal=1
run_asan=1
full=0
while (($#)); do
  case "$1" in
    --full) full=1 ;;
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

jobs=${JOBS:-2}
test_jobs=${TEST_JOBS:-2}
overlap=${OVERLAP:-1}
read -r -a extra_test_args <<<"${MESON_TEST_ARGS:-}"
started=$SECONDS
logs=build/ci-logs
mkdir -p "$logs"

# The long tests' reduced sizes: a tenth of the million files, 512 MiB of
# the 2 GiB spill, 4 s of the 10 s soak, 50 of the 200 seed recipe calls, 4
# of the 16 random spill interleavings. They run the same code paths on
# less. Used by every build of the CI tier and by the sanitizer builds of
# --full; a size already in the environment wins.
reduced_sizes=(
  "CAPTUREFS_MILLION=${CAPTUREFS_MILLION:-100000}"
  "CAPTUREFS_SPILL_TEST_SIZE=${CAPTUREFS_SPILL_TEST_SIZE:-512M}"
  "CAPTUREFS_SOAK_SECONDS=${CAPTUREFS_SOAK_SECONDS:-4}"
  "CAPTUREFS_SEED_CALLS=${CAPTUREFS_SEED_CALLS:-50}"
  "CAPTUREFS_SPILL_SEEDS=${CAPTUREFS_SPILL_SEEDS:-4}"
)

# The sanitizer builds: -O0, line tables only (-g1: the reports keep file
# and line; full debug info costs ~15% more compile time).
asan_options=(-Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug -Dcpp_args=-g1)
tsan_options=(-Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug -Dcpp_args=-g1)
# The Python capture() of an output far above --max-stream runs on 200 MiB
# in the normal build and on 64 MiB under the sanitizers (same code paths).
asan_env=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  "CAPTUREFS_CAPTURE_MIB=${CAPTUREFS_CAPTURE_MIB:-64}")
tsan_env=(TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 "CAPTUREFS_CAPTURE_MIB=${CAPTUREFS_CAPTURE_MIB:-64}")

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
  [[ "$2" == ok* ]] || failed=1
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

# suite_targets DIR SUITE: the build outputs (paths relative to DIR) the
# tests of SUITE need, as `meson test --suite SUITE` would rebuild them.
suite_targets() {
  python3 - "$1" "$2" <<'PY'
import json, os, sys
build, suite = sys.argv[1], sys.argv[2]
info = os.path.join(build, "meson-info")
with open(os.path.join(info, "intro-tests.json")) as f:
    tests = json.load(f)
with open(os.path.join(info, "intro-targets.json")) as f:
    files = {t["id"]: t["filename"] for t in json.load(f)}
out = set()
for t in tests:
    if suite in (s.split(":")[-1] for s in t["suite"]):
        for d in t["depends"]:
            out.update(os.path.relpath(p, build) for p in files[d])
print("\n".join(sorted(out)))
PY
}

# compile DIR [SUITE]: build everything in DIR, or only what SUITE's tests
# need.
compile() {
  local dir=$1 suite=${2:-}
  if [[ -z "$suite" ]]; then
    meson compile -C "$dir" -j "$jobs"
  else
    local targets
    mapfile -t targets < <(suite_targets "$dir" "$suite")
    ((${#targets[@]})) || { echo "test.sh: suite $suite has no tests in $dir" >&2; return 1; }
    ninja -C "$dir" -j "$jobs" "${targets[@]}"
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

# build LABEL DIR SUITE -- MESON-OPTIONS...: configure and compile (only
# SUITE's tests and what they need, or everything if SUITE is "").
# Sets built=1 on success.
build() {
  local label=$1 dir=$2 suite=$3
  shift 4
  built=0
  header "$label: configure $dir"
  if ! configure "$dir" "$@"; then
    record "$label: configure" FAILED
    return
  fi
  record "$label: configure" ok
  header "$label: compile $dir${suite:+ (suite $suite)}"
  local t0=$SECONDS
  if ! compile "$dir" "$suite"; then
    record "$label: compile" FAILED
    return
  fi
  record "$label: compile" "ok ($((SECONDS - t0))s)"
  built=1
}

# run_tests LABEL DIR SUITE [ENV=VALUE... --] [MESON-TEST-ARGS...]
run_tests() {
  local label=$1 dir=$2 suite=$3
  shift 3
  local env=()
  while (($#)) && [[ "$1" == *=* ]]; do
    env+=("$1")
    shift
  done
  header "$label: test $dir${suite:+ (suite $suite)}"
  clean_stale_results "$dir"
  local rc=0 t0=$SECONDS
  env "${env[@]}" meson test -C "$dir" --no-rebuild --print-errorlogs \
    --num-processes "$test_jobs" ${suite:+--suite "$suite"} \
    "$@" "${extra_test_args[@]}" || rc=$?
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
    record "$label: test" "ok ($((SECONDS - t0))s; $counts)"
  fi
}

header "setup-deps"
deps_ok=0
if bash scripts/setup-deps.sh; then
  record "setup-deps" ok
  deps_ok=1
else
  record "setup-deps" FAILED
fi

# In the CI tier the sanitizer builds run suite 'sanitize' only; --full runs
# every suite in them.
if ((full)); then
  normal_env=()
  san_suite=""
else
  normal_env=("${reduced_sizes[@]}")
  san_suite=sanitize
fi

# ---- the normal build. Its tests run with nothing else on the machine:
# several measure promptness and the daemon's memory.
built=0
if ((deps_ok && run_normal)); then
  build normal build "" -- -Dwerror=true
fi
normal_built=$built

if ((normal_built)); then
  run_tests normal build "" "${normal_env[@]}"
fi

# The benchmark harness, as a smoke check that it still runs (tiny sizes;
# the numbers mean nothing here and are not judged).
if ((normal_built)); then
  header "bench --quick (smoke)"
  t0=$SECONDS
  if scripts/bench --quick --no-build >"$logs/bench-quick.log" 2>&1; then
    record "bench --quick" "ok ($((SECONDS - t0))s)"
  else
    tail -n 30 "$logs/bench-quick.log"
    record "bench --quick" "FAILED (log: $logs/bench-quick.log)"
  fi
fi

# valgrind memcheck on the daemon of two integration suites (--full only;
# the daemon runs under valgrind through the test fixture; an error or a
# definite leak makes it exit 99, which fails the test at unmount).
# Process-exit watching (pidfd_open) does not exist under valgrind 3.19, so
# suites that test it are left out.
if ((normal_built && full)); then
  header "valgrind: mount_semantics mount_socket"
  t0=$SECONDS
  if CAPTUREFS_DAEMON_WRAPPER="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
    meson test -C build --no-rebuild --timeout-multiplier 3 mount_semantics mount_socket \
      >"$logs/valgrind.log" 2>&1; then
    record "valgrind (2 mount suites)" "ok ($((SECONDS - t0))s)"
  else
    tail -n 40 "$logs/valgrind.log"
    grep -n -B2 -A12 "Failure" build/meson-logs/testlog.txt | tail -n 60 || true
    record "valgrind (2 mount suites)" "FAILED (log: $logs/valgrind.log)"
  fi
fi

# ---- the sanitizer builds. A failing test in the normal build does not
# stop them (their reports help); a normal build that does not compile
# does.
#
# ASan+UBSan, then TSan: the core's delivery threads and parked operations
# in the unit tests, and the daemon (FUSE workers, socket connections,
# --exec runners, the exit watch) under the mount tests. libfuse itself is
# not instrumented; its locks are seen through the pthread interceptors.
#
# The TSan build compiles while the ASan+UBSan tests run (OVERLAP=0: after
# them): compiling dominates, and in sanitized builds the tests enforce no
# memory bounds and their timeouts are multiplied, so the shared CPU only
# slows them. The normal build's tests never share the machine.
if ((run_asan && deps_ok && (normal_built || !run_normal))); then
  build asan+ubsan build-asan "$san_suite" -- "${asan_options[@]}"
  asan_built=$built

  tsan_pid=""
  if ((overlap)); then
    header "tsan: configure and compile build-tsan in the background (log: $logs/tsan-build.log)"
    (
      exec >"$logs/tsan-build.log" 2>&1
      t0=$SECONDS
      configure build-tsan "${tsan_options[@]}" || exit 10
      compile build-tsan "$san_suite" || exit 11
      echo "compiled in $((SECONDS - t0))s"
    ) &
    tsan_pid=$!
  fi

  if ((asan_built)); then
    run_tests asan+ubsan build-asan "$san_suite" "${asan_env[@]}" "${reduced_sizes[@]}" \
      --timeout-multiplier 3
  fi

  if [[ -n "$tsan_pid" ]]; then
    header "tsan: waiting for the build-tsan compile"
    rc=0
    wait "$tsan_pid" || rc=$?
    tail -n 5 "$logs/tsan-build.log"
    built=0
    case $rc in
      0) record "tsan: configure" ok
         record "tsan: compile" "ok ($(sed -n 's/^compiled in //p' "$logs/tsan-build.log"), beside the asan tests)"
         built=1 ;;
      10) tail -n 40 "$logs/tsan-build.log"; record "tsan: configure" "FAILED (log: $logs/tsan-build.log)" ;;
      *) tail -n 40 "$logs/tsan-build.log"; record "tsan: configure" ok
         record "tsan: compile" "FAILED (log: $logs/tsan-build.log)" ;;
    esac
  else
    build tsan build-tsan "$san_suite" -- "${tsan_options[@]}"
  fi
  if ((built)); then
    run_tests tsan build-tsan "$san_suite" "${tsan_env[@]}" "${reduced_sizes[@]}" \
      --timeout-multiplier 5
  fi
elif ((run_asan)); then
  record "asan+ubsan, tsan" "SKIPPED (an earlier step failed)"
fi

header "summary"
printf '%s\n' "${summary[@]}"
echo "elapsed: $((SECONDS - started))s"
echo "tests: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$failed"
