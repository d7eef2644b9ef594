// The Linux exit watch (pidfd): callbacks run once per watched process that
// exits, and poll_now() shows the caller every exit it already reaped,
// including one the watcher thread is reporting at that moment.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <thread>

#include "core/exit_watch.hpp"

namespace capturefs::core {
namespace {

// A child that exits when its pipe closes: the test decides when.
struct Child {
  pid_t pid = -1;
  int release_fd = -1;
  Child() {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    pid = ::fork();
    if (pid == 0) {
      ::close(p[1]);
      char c;
      (void)!::read(p[0], &c, 1);
      ::_exit(0);
    }
    ::close(p[0]);
    release_fd = p[1];
  }
  // Lets the child exit and reaps it: like a tool the caller waited for.
  void exit_and_reap() {
    ::close(release_fd);
    release_fd = -1;
    int st = 0;
    EXPECT_EQ(::waitpid(pid, &st, 0), pid);
  }
  ~Child() {
    if (release_fd >= 0) exit_and_reap();
  }
};

TEST(ExitWatch, PollNowRunsTheCallbackOfAReapedProcessBeforeItReturns) {
  auto w = make_pidfd_exit_watch();
  Child c;
  std::atomic<int> calls{0};
  ASSERT_TRUE(w->watch(c.pid, [&] { ++calls; }));
  c.exit_and_reap();
  w->poll_now();
  EXPECT_EQ(calls.load(), 1);  // whichever thread ran it, it ran before poll_now returned
  w->poll_now();
  EXPECT_EQ(calls.load(), 1);  // once only
}

TEST(ExitWatch, PollNowWaitsForACallbackTheWatcherThreadIsRunning) {
  auto w = make_pidfd_exit_watch();
  Child c;
  std::promise<void> started, release;
  std::shared_future<void> go = release.get_future().share();
  std::atomic<bool> finished{false};
  ASSERT_TRUE(w->watch(c.pid, [&] {
    started.set_value();
    go.wait();
    finished = true;
  }));
  c.exit_and_reap();
  started.get_future().wait();  // the watcher thread took the exit and is in the callback
  std::atomic<bool> returned{false};
  bool saw_finished = false;
  std::thread poller([&] {
    w->poll_now();
    saw_finished = finished.load();
    returned = true;
  });
  const bool early = returned.load();  // poll_now must still be waiting
  release.set_value();
  poller.join();
  EXPECT_FALSE(early);
  EXPECT_TRUE(saw_finished) << "poll_now returned while the callback of a reaped process was running";
}

TEST(ExitWatch, AProcessAlreadyGoneIsRefused) {
  auto w = make_pidfd_exit_watch();
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  bool called = false;
  EXPECT_FALSE(w->watch(pid, [&] { called = true; }));  // the caller ends things itself
  w->poll_now();
  EXPECT_FALSE(called);
  EXPECT_FALSE(w->watch(0, [&] { called = true; }));
}

TEST(ExitWatch, ClearForgetsPendingCallbacks) {
  auto w = make_pidfd_exit_watch();
  Child c;
  std::atomic<int> calls{0};
  ASSERT_TRUE(w->watch(c.pid, [&] { ++calls; }));
  w->clear();
  c.exit_and_reap();
  w->poll_now();
  EXPECT_EQ(calls.load(), 0);
}

}  // namespace
}  // namespace capturefs::core
