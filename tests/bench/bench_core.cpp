// Micro-benchmarks of src/core (no FUSE, no mount): the cost of the data
// structures underneath every FUSE request, to tell apart "the core is slow"
// from "the kernel round trip is slow".
//
//   build/tests/bench/bench_core [--benchmark_filter=REGEX] [--benchmark_min_time=0.1]
//
// scripts/bench runs it and puts the results in its report. Only the
// long-lived, front-end-facing API is used (ByteQueue; Volume create, open,
// write, read, flush, release, lookup, forget), so that the benchmarks keep
// compiling while the core grows.
#include <benchmark/benchmark.h>
#include <fcntl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "core/byte_queue.hpp"
#include "core/volume.hpp"

namespace {

using capturefs::core::ByteQueue;
using capturefs::core::Caller;
using capturefs::core::Handle;
using capturefs::core::Ino;
using capturefs::core::kRootIno;
using capturefs::core::Limits;
using capturefs::core::Result;
using capturefs::core::Volume;

template <class T>
T must(Result<T> r, const char* what) {
  if (!r) throw std::runtime_error(std::string(what) + " failed, errno " + std::to_string(r.error()));
  return std::move(r).value();
}

// ---- ByteQueue ---------------------------------------------------------------

// append(n) then pop(n) on a queue that is empty in between: the stream of a
// reader that keeps up. The queue frees a drained block at once, so each
// round allocates and frees one block: this is the allocator's cost too.
void BM_ByteQueue_AppendPop(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<std::byte> in(n, std::byte{'x'}), out(n);
  ByteQueue q;
  std::size_t freed = 0;
  for (auto _ : state) {
    q.append(in);
    benchmark::DoNotOptimize(q.pop(out, &freed));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_ByteQueue_AppendPop)->Arg(256)->Arg(4 << 10)->Arg(128 << 10);

// The same with 1 MiB standing in the queue: a reader that lags behind, so
// blocks fill completely before they drain.
void BM_ByteQueue_AppendPopBacklog(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<std::byte> in(n, std::byte{'x'}), out(n);
  std::vector<std::byte> backlog(1 << 20, std::byte{'b'});
  ByteQueue q;
  q.append(backlog);
  std::size_t freed = 0;
  for (auto _ : state) {
    q.append(in);
    benchmark::DoNotOptimize(q.pop(out, &freed));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_ByteQueue_AppendPopBacklog)->Arg(256)->Arg(4 << 10)->Arg(128 << 10);

// ---- Volume: one stream's whole life -------------------------------------------

// create (writer) + write n bytes + release the writer + open the consumer +
// read to EOF + flush + release + forget: what one FUSE "churn" file costs
// in the core, without the kernel.
void BM_Volume_StreamCycle(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  Volume v(Limits{});
  std::vector<std::byte> data(n, std::byte{'d'});
  const Caller who{};
  std::uint64_t i = 0;
  std::string name;
  for (auto _ : state) {
    name = "s" + std::to_string(i++);
    auto c = must(v.create(kRootIno, name, 0644, O_WRONLY | O_CREAT | O_EXCL, who), "create");
    const Ino ino = c.attr.ino;
    auto w = v.write(*c.handle, 0, data, 0, [](Result<std::size_t>) {});
    if (std::holds_alternative<capturefs::core::Parked>(w)) throw std::runtime_error("write parked");
    must(std::get<0>(std::move(w)), "write");
    v.flush(*c.handle);
    v.release(std::move(c.handle));
    auto r = must(v.open(ino, O_RDONLY), "open");
    std::uint64_t off = 0;
    for (;;) {
      auto out = v.read(*r, off, 128 << 10, 0, [](Result<std::span<const std::byte>>) {});
      if (std::holds_alternative<capturefs::core::Parked>(out)) throw std::runtime_error("read parked");
      auto bytes = must(std::get<0>(std::move(out)), "read");
      if (bytes.empty()) break;
      off += bytes.size();
    }
    if (off != n) throw std::runtime_error("short read");
    v.flush(*r);
    v.release(std::move(r));
    v.forget(ino, 1);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_Volume_StreamCycle)->Arg(100)->Arg(128 << 10);

// ---- Volume: names -------------------------------------------------------------

constexpr int kNames = 10000;

std::unique_ptr<Volume> volume_with_names(std::vector<std::string>* names) {
  auto v = std::make_unique<Volume>(Limits{});
  const Caller who{};
  for (int i = 0; i < kNames; ++i) {
    names->push_back("out-" + std::to_string(i * 7919 % 100000) + ".log");
    auto a = must(v->mknod(kRootIno, names->back(), 0100644, who), "mknod");
    (void)a;
  }
  return v;
}

// lookup + forget of an existing name in a directory of 10k names: the
// LOOKUP every open() costs with entry timeout 0.
void BM_Volume_Lookup10k(benchmark::State& state) {
  std::vector<std::string> names;
  auto v = volume_with_names(&names);
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& n = names[i];
    i = (i + 7) % names.size();
    auto a = must(v->lookup(kRootIno, n), "lookup");
    benchmark::DoNotOptimize(a);
    v->forget(a.ino, 1);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_Volume_Lookup10k);

// A missing name in the same directory (the negative LOOKUP before every
// create).
void BM_Volume_LookupMiss10k(benchmark::State& state) {
  std::vector<std::string> names;
  auto v = volume_with_names(&names);
  std::vector<std::string> missing;
  for (const auto& n : names) missing.push_back(n + ".missing");
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& n = missing[i];
    i = (i + 7) % missing.size();
    auto a = v->lookup(kRootIno, n);
    benchmark::DoNotOptimize(a);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_Volume_LookupMiss10k);

}  // namespace

BENCHMARK_MAIN();
