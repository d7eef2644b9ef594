#!/usr/bin/env bash
# Fuzzes the socket protocol decoder (src/proto) with libFuzzer under ASan
# and UBSan.
#
#   scripts/fuzz-proto.sh [SECONDS]      run for SECONDS (default 600)
#
# Builds build-fuzz/fuzz_decoder with clang++ straight from the sources
# (-fsanitize=fuzzer,address,undefined; no meson involved), copies the seed
# corpus tests/proto/corpus/ to build-fuzz/corpus/ (the seeds are not
# touched; inputs that reach new coverage are added to the copy), and runs
# the fuzzer. A crash, sanitizer report, leak, timeout or broken invariant
# is saved under build-fuzz/artifacts/ and makes the script exit non-zero.
# Then it replays the grown corpus through a coverage build of the same
# target and prints the line and branch coverage of src/proto/codec.cpp.
#
# Needs clang and libclang-rt-14-dev (scripts/setup-deps.sh installs both).
# Environment: CXX (default clang++), FUZZ_ARGS (extra libFuzzer flags,
# e.g. "-jobs=2 -workers=2"), COVERAGE=0 to skip the coverage report.
set -euo pipefail

usage() {
  sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

seconds=600
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  '') ;;
  *[!0-9]*) echo "fuzz-proto.sh: SECONDS must be a number: $1" >&2; usage >&2; exit 2 ;;
  *) seconds=$1 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/build-fuzz
cxx=${CXX:-clang++}
read -r -a extra <<<"${FUZZ_ARGS:-}"

if ! command -v "$cxx" >/dev/null; then
  echo "fuzz-proto.sh: $cxx not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

mkdir -p "$out/artifacts"
sources=("$root/src/proto/codec.cpp" "$root/tests/proto/fuzz_decoder.cpp")
flags=(-std=c++20 -g -Wall -Wextra -Wpedantic -Werror -I"$root/src" -DCAPTUREFS_FUZZER_NO_MAIN)

echo "== building $out/fuzz_decoder"
"$cxx" "${flags[@]}" -O2 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  "${sources[@]}" -o "$out/fuzz_decoder"

rm -rf "$out/corpus"
cp -r "$root/tests/proto/corpus" "$out/corpus"
seeds=$(find "$out/corpus" -type f | wc -l)

echo "== fuzzing for ${seconds}s from $seeds seeds (log: $out/fuzz.log)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
rc=0
"$out/fuzz_decoder" \
  -max_total_time="$seconds" \
  -max_len=8192 \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -dict="$root/tests/proto/fuzz.dict" \
  -artifact_prefix="$out/artifacts/" \
  -print_final_stats=1 \
  "${extra[@]}" \
  "$out/corpus" >"$out/fuzz.log" 2>&1 || rc=$?

grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$out/fuzz.log" || true
grep -E '^stat::' "$out/fuzz.log" || true
echo "corpus: $seeds seeds -> $(find "$out/corpus" -type f | wc -l) inputs"

if ((rc != 0)) || [[ -n "$(ls -A "$out/artifacts")" ]]; then
  echo "== FINDING (fuzzer exit $rc); artifacts:" >&2
  ls -l "$out/artifacts" >&2 || true
  grep -E -A30 'ERROR: |invariant broken|runtime error' "$out/fuzz.log" | head -60 >&2 || true
  exit 1
fi

if [[ "${COVERAGE:-1}" != 0 ]]; then
  echo "== coverage of the grown corpus"
  profdata=$(command -v llvm-profdata || command -v llvm-profdata-14 || true)
  llvmcov=$(command -v llvm-cov || command -v llvm-cov-14 || true)
  if [[ -z "$profdata" || -z "$llvmcov" ]]; then
    echo "llvm-profdata/llvm-cov not found: no coverage report"
  else
    "$cxx" "${flags[@]}" -O0 -fprofile-instr-generate -fcoverage-mapping -UCAPTUREFS_FUZZER_NO_MAIN \
      "${sources[@]}" -o "$out/fuzz_decoder_cov"
    LLVM_PROFILE_FILE="$out/cov.profraw" "$out/fuzz_decoder_cov" "$out/corpus" >/dev/null
    "$profdata" merge -sparse "$out/cov.profraw" -o "$out/cov.profdata"
    "$llvmcov" report "$out/fuzz_decoder_cov" -instr-profile="$out/cov.profdata" \
      "$root/src/proto/codec.cpp"
  fi
fi
echo "== no findings"
