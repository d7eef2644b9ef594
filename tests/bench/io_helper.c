/* I/O driver for scripts/bench: does the timed part of every system-level
 * benchmark in C, so that the interpreter running the harness never sits on
 * the measured path (Python's os.write at 256 B would be the bottleneck).
 *
 * scripts/bench compiles it on the fly (cc -O2 -pthread) into the build
 * directory. Each mode prints one line of JSON on stdout and exits 0, or
 * prints a message on stderr and exits 1 (a short or corrupted transfer is
 * an error, never a number).
 *
 *   io_helper tput KIND DIR SIZE TOTAL PAIRS RBUF
 *       KIND pipe   : writer process -> pipe -> reader process
 *            file   : writer process writes DIR/f.N, then a reader process
 *                     reads it back and unlinks it (tmpfs baseline)
 *            stream : writer process writes DIR/t.N while a reader process
 *                     reads the same path (capturefs read-through)
 *            socket : writer process writes DIR/t.N; a reader process execs
 *                     bench_socket_consumer, which takes the stream through
 *                     the daemon's socket DIR.sock (`capturefs mount DIR
 *                     --socket DIR.sock`), subscribed before the clock starts
 *            callback : writer process writes DIR/t.N.wSIZE into a mount
 *                     served by bench_callback (libcapturefs in-process,
 *                     callbacks); one collector process reads the
 *                     consumer's end-of-stream lines ("E PATH TOTAL ...")
 *                     from the FIFO DIR.report and checks every total
 *       PAIRS writer/reader pairs run at once; TOTAL bytes are split evenly
 *       between them; writes are exactly SIZE bytes, reads ask for RBUF.
 *       Files are created and opened before the clock starts; the clock stops
 *       when every reader has seen EOF (socket: CLOSED; callback: the end
 *       line of every stream) and every process has exited. Also reports
 *       the number of read() calls (reads, EOF included; socket: DATA
 *       frames + 1; callback: on_data calls + 1).
 *
 *   io_helper churn KIND DIR N
 *       N times, in one process: create, write 100 B, close, then consume.
 *       KIND stream : open(O_CREAT|O_EXCL), write, close; open(O_RDONLY),
 *                     read to EOF, close (capturefs drops the name itself)
 *            file   : the same, plus unlink() (a regular file)
 *            fifo   : the mkfifo recipe: mkdtemp(DIR/...), mkfifo, a writer
 *                     *thread* opens, writes 100 B, closes; the caller opens
 *                     for reading, reads to EOF; join, unlink, rmdir
 *            socket : execs `bench_socket_consumer churn DIR.sock DIR N`: the
 *                     same create, write, close, then the stream is taken
 *                     from the socket (subscribed once, to c.PID.*)
 *            callback : create, write, close, then wait for bench_callback's
 *                     end line for that name on DIR.report
 *
 *   io_helper lat KIND DIR N GAP_US
 *       N samples (after 200 warm-up ones) of the time from just before a
 *       64 B write() (the writer stores its CLOCK_MONOTONIC time in the
 *       bytes) to the moment the reader, already blocked in read(), has them.
 *       The reader acknowledges on a side pipe; the writer then waits GAP_US
 *       so that the reader is blocked again before the next write.
 *       KIND pipe, stream (a capturefs path in DIR), socket (the consumer is
 *       bench_socket_consumer on DIR.sock: it stamps a message as soon as
 *       the DATA frame is decoded, and acknowledges to the writer itself) or
 *       callback (bench_callback stamps it in on_data and reports the
 *       difference as an "L" line on DIR.report; the driver acknowledges to
 *       the writer once it has read that line).
 *
 *   io_helper rss DIR N PER_STREAM CHUNK DAEMON_PID SETTLE_MS
 *       N writer threads each create DIR/r.I and write PER_STREAM bytes in
 *       CHUNK-sized writes, with no reader. Once every stream exists, waits
 *       until the daemon's VmRSS has not grown for SETTLE_MS (the writers
 *       are parked on the memory cap) and records VmHWM; then N reader
 *       threads drain every stream concurrently (checking every byte
 *       count) and VmHWM is recorded again.
 *
 * The socket and callback kinds find their consumer from DIR: the socket
 * at DIR.sock, the report FIFO at DIR.report, and bench_socket_consumer
 * next to this program (BUILD/tests/bench/bench_socket_consumer when this
 * is BUILD/bench-io-helper; override with IO_HELPER_SOCKET_CONSUMER).
 *
 * When it fails, it kills the processes it forked (by pid) and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The writers and readers this process forked: when it dies, it kills them
 * (by pid), so that none is left writing into a mount with no reader. */
static pid_t g_main = 0;
static pid_t g_children[1024];
static int g_nchildren = 0;

static pid_t fork_child(void) {
  if (g_nchildren == (int)(sizeof g_children / sizeof g_children[0])) {
    errno = 0;
    fprintf(stderr, "io_helper: too many children\n");
    exit(1);
  }
  pid_t pid = fork();
  if (pid > 0) g_children[g_nchildren++] = pid;
  return pid;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "io_helper: ");
  vfprintf(stderr, fmt, ap);
  if (errno != 0) fprintf(stderr, ": %s", strerror(errno));
  fprintf(stderr, "\n");
  va_end(ap);
  if (getpid() == g_main)
    for (int i = 0; i < g_nchildren; ++i) kill(g_children[i], SIGKILL);
  exit(1);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t parse_u64(const char *s) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    errno = 0;
    die("not a number: %s", s);
  }
  return (uint64_t)v;
}

static void write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += w;
    n -= (size_t)w;
  }
}

/* Reads exactly n bytes (or dies at EOF). */
static void read_exact(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (r == 0) {
      errno = 0;
      die("unexpected EOF");
    }
    p += r;
    n -= (size_t)r;
  }
}

static void raise_nofile(rlim_t need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur >= need) return;
  rl.rlim_cur = need;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) rl.rlim_max = need;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* Buffers come from plain malloc(), as in most tools: a large one starts 16
 * bytes past a page boundary, so a 1 MiB write spans 257 pages. Set
 * IO_HELPER_ALIGN=1 to page-align them instead (for comparison). */
static void *xmalloc(size_t n) {
  void *p = NULL;
  const char *align = getenv("IO_HELPER_ALIGN");
  if (align != NULL && strcmp(align, "1") == 0) {
    if (posix_memalign(&p, 4096, n == 0 ? 1 : n) != 0) p = NULL;
  } else {
    p = malloc(n == 0 ? 1 : n);
  }
  if (p == NULL) die("out of memory");
  memset(p, 0, n);  /* touch every page before any clock starts */
  return p;
}

/* ---- tput -------------------------------------------------------------- */

/* Byte at absolute offset `off` of a stream written in SIZE-byte writes of
 * one fixed buffer: the reader checks the first and last byte of every
 * read, cheaply catching lost, duplicated or reordered bytes. */
static unsigned char pattern_at(uint64_t off, size_t size) {
  return (unsigned char)((off % size) % 251);
}

enum kind { K_PIPE, K_FILE, K_STREAM, K_SOCKET, K_CALLBACK };

static enum kind parse_kind(const char *s) {
  if (strcmp(s, "pipe") == 0) return K_PIPE;
  if (strcmp(s, "file") == 0) return K_FILE;
  if (strcmp(s, "stream") == 0) return K_STREAM;
  if (strcmp(s, "socket") == 0) return K_SOCKET;
  if (strcmp(s, "callback") == 0) return K_CALLBACK;
  errno = 0;
  die("unknown kind %s", s);
  return K_PIPE;
}

/* ---- the socket and callback consumers --------------------------------- */

/* DIR + suffix, without DIR's trailing slashes: the daemon's socket is
 * DIR.sock, bench_callback's report FIFO DIR.report. */
static void sibling(char *out, size_t cap, const char *dir, const char *suffix) {
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/') --n;
  if (snprintf(out, cap, "%.*s%s", (int)n, dir, suffix) >= (int)cap) {
    errno = 0;
    die("path too long: %s%s", dir, suffix);
  }
}

static const char *socket_consumer(void) {
  static char path[4096];
  const char *env = getenv("IO_HELPER_SOCKET_CONSUMER");
  if (env != NULL && *env != '\0') {
    snprintf(path, sizeof path, "%s", env);
  } else {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) die("readlink /proc/self/exe");
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash != NULL) *slash = '\0';
    snprintf(path, sizeof path, "%.4000s/tests/bench/bench_socket_consumer", self);
  }
  if (access(path, X_OK) != 0) die("%s (build it: meson compile -C BUILD bench_socket_consumer)", path);
  return path;
}

/* Lines from bench_callback's report FIFO. */
struct lines {
  int fd;
  size_t start, len;
  char buf[65536];
};

/* Opens DIR.report and drops whatever is in it (lines left by an earlier
 * run that failed). bench_callback holds the FIFO open read-write, so a
 * read that finds no writer means it is not running. */
static struct lines *lines_open(const char *dir) {
  char path[4096];
  sibling(path, sizeof path, dir, ".report");
  struct lines *l = calloc(1, sizeof *l);
  if (l == NULL) die("out of memory");
  l->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (l->fd < 0) die("open %s (is bench_callback serving %s?)", path, dir);
  for (;;) {
    ssize_t r = read(l->fd, l->buf, sizeof l->buf);
    if (r > 0) continue;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) break;
    if (r == 0) errno = 0;
    die("%s: no bench_callback holds it", path);
  }
  if (fcntl(l->fd, F_SETFL, 0) != 0) die("fcntl");
  return l;
}

/* The next line, NUL-terminated, without its newline. */
static char *lines_next(struct lines *l) {
  for (;;) {
    char *nl = memchr(l->buf + l->start, '\n', l->len - l->start);
    if (nl != NULL) {
      char *line = l->buf + l->start;
      *nl = '\0';
      l->start = (size_t)(nl - l->buf) + 1;
      return line;
    }
    memmove(l->buf, l->buf + l->start, l->len - l->start);
    l->len -= l->start;
    l->start = 0;
    if (l->len == sizeof l->buf) {
      errno = 0;
      die("report line too long");
    }
    ssize_t r = read(l->fd, l->buf + l->len, sizeof l->buf - l->len);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read report");
    }
    if (r == 0) {
      errno = 0;
      die("report FIFO closed");
    }
    l->len += (size_t)r;
  }
}

/* An end line "E PATH TOTAL CHUNKS STATUS": 1 if `line` is one (fields
 * filled in), 0 if not. */
static int parse_end(const char *line, char *path, size_t cap, uint64_t *total, uint64_t *chunks, char *status,
                     size_t scap) {
  if (line[0] != 'E' || line[1] != ' ') return 0;
  const char *p = line + 2, *sp = strchr(p, ' ');
  if (sp == NULL || (size_t)(sp - p) >= cap) return 0;
  memcpy(path, p, (size_t)(sp - p));
  path[sp - p] = '\0';
  unsigned long long t = 0, c = 0;
  int used = 0;
  if (sscanf(sp + 1, "%llu %llu %n", &t, &c, &used) != 2) return 0;
  snprintf(status, scap, "%s", sp + 1 + used);
  *total = t;
  *chunks = c;
  return 1;
}

/* Waits for the end line of the stream `name` (other streams' lines are
 * skipped) and checks it: complete, `expect` bytes. */
static void wait_end(struct lines *l, const char *name, uint64_t expect) {
  char path[4096], status[1024];
  uint64_t total = 0, chunks = 0;
  for (;;) {
    char *line = lines_next(l);
    if (!parse_end(line, path, sizeof path, &total, &chunks, status, sizeof status)) continue;
    if (strcmp(path, name) != 0) continue;
    errno = 0;
    if (strcmp(status, "ok") != 0) die("%s: the callback consumer says %s", name, status);
    if (total != expect)
      die("%s: the callback consumer got %llu bytes, expected %llu", name, (unsigned long long)total,
          (unsigned long long)expect);
    return;
  }
}

static void wait_go(int go_fd) {
  char c;
  ssize_t r;
  do r = read(go_fd, &c, 1);
  while (r < 0 && errno == EINTR);
  /* EOF: the parent closed the write end: go. */
}

static void signal_ready(int ready_fd) { write_all(ready_fd, "r", 1); }

/* Waits for `count` ready bytes; dies if a child exits first (e.g. a
 * consumer that could not connect) instead of waiting for it forever. */
static void wait_ready(int ready_fd, int count) {
  char buf[256];
  int got = 0;
  while (got < count) {
    struct pollfd pfd = {ready_fd, POLLIN, 0};
    int pr = poll(&pfd, 1, 100);
    if (pr < 0 && errno != EINTR) die("poll");
    if (pr <= 0) {
      siginfo_t si;
      memset(&si, 0, sizeof si);
      if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid != 0) {
        errno = 0;
        die("a child (pid %d) exited during setup", (int)si.si_pid);
      }
      continue;
    }
    int want = count - got < (int)sizeof buf ? count - got : (int)sizeof buf;
    ssize_t r = read(ready_fd, buf, (size_t)want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      errno = 0;
      die("a child died during setup");
    }
    got += (int)r;
  }
}

/* The name pair I's writer creates (relative to DIR): f.PID.I (files),
 * t.PID.I (streams), t.PID.I.wSIZE (callback: tells bench_callback the
 * pattern to check). PID is the driver's. */
static void tput_name(char *out, size_t cap, enum kind kind, int pid, int i, size_t size) {
  if (kind == K_CALLBACK) snprintf(out, cap, "t.%d.%d.w%zu", pid, i, size);
  else snprintf(out, cap, "%c.%d.%d", kind == K_FILE ? 'f' : 't', pid, i);
}

/* bench_callback's collector: reads end lines until every pair's stream
 * has ended, checks each total, and writes {bytes, chunks + 1} per pair to
 * the result pipe. */
static void collect_callback(struct lines *l, int pairs, uint64_t per, int result_fd) {
  char prefix[64], path[4096], status[1024];
  snprintf(prefix, sizeof prefix, "t.%d.", (int)getppid());
  char *seen = calloc((size_t)pairs, 1);
  int ended = 0;
  while (ended < pairs) {
    uint64_t total = 0, chunks = 0;
    char *line = lines_next(l);
    if (!parse_end(line, path, sizeof path, &total, &chunks, status, sizeof status)) continue;
    if (strncmp(path, prefix, strlen(prefix)) != 0) continue; /* not ours */
    int i = atoi(path + strlen(prefix));
    errno = 0;
    if (i < 0 || i >= pairs || seen[i]) die("%s: unexpected end line", path);
    if (strcmp(status, "ok") != 0) die("%s: the callback consumer says %s", path, status);
    if (total != per)
      die("pair %d: the callback consumer got %llu bytes, expected %llu", i, (unsigned long long)total,
          (unsigned long long)per);
    seen[i] = 1;
    ++ended;
    uint64_t res[2] = {total, chunks + 1};
    write_all(result_fd, res, sizeof res);
  }
}

static int mode_tput(int argc, char **argv) {
  if (argc != 8) {
    errno = 0;
    die("usage: tput KIND DIR SIZE TOTAL PAIRS RBUF");
  }
  enum kind kind = parse_kind(argv[2]);
  const char *dir = argv[3];
  size_t size = (size_t)parse_u64(argv[4]);
  uint64_t total = parse_u64(argv[5]);
  int pairs = (int)parse_u64(argv[6]);
  size_t rbuf = (size_t)parse_u64(argv[7]);
  if (size == 0 || pairs <= 0 || rbuf == 0) {
    errno = 0;
    die("SIZE, PAIRS and RBUF must be positive");
  }
  raise_nofile((rlim_t)pairs * 8 + 64);
  uint64_t per = total / (uint64_t)pairs;
  per -= per % size; /* whole writes only */
  if (per == 0) per = size;

  int ready[2], go[2], result[2];
  if (pipe(ready) != 0 || pipe(go) != 0 || pipe(result) != 0) die("pipe");
  pid_t *pids = calloc((size_t)pairs * 2, sizeof(pid_t));
  int npids = 0;
  int *data = calloc((size_t)pairs * 2, sizeof(int));  /* pipe ends (K_PIPE) */
  int *done = calloc((size_t)pairs * 2, sizeof(int));  /* writer-finished pipes (K_FILE) */
  char path[4096];

  for (int i = 0; i < pairs; ++i) {
    if (kind == K_PIPE && pipe(&data[2 * i]) != 0) die("pipe");
    if (kind == K_FILE && pipe(&done[2 * i]) != 0) die("pipe");
  }

  /* Writers first: for files and streams they create the names. */
  for (int i = 0; i < pairs; ++i) {
    pid_t pid = fork_child();
    if (pid < 0) die("fork");
    if (pid == 0) {
      int fd = -1;
      if (kind == K_PIPE) {
        fd = data[2 * i + 1];
      } else {
        char name[256];
        tput_name(name, sizeof name, kind, (int)getppid(), i, size);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) die("open %s for writing", path);
      }
      for (int j = 0; j < pairs; ++j) { /* keep only our own ends */
        if (kind == K_PIPE) {
          close(data[2 * j]);
          if (j != i) close(data[2 * j + 1]);
        }
        if (kind == K_FILE) {
          close(done[2 * j]);
          if (j != i) close(done[2 * j + 1]);
        }
      }
      unsigned char *buf = xmalloc(size);
      for (size_t k = 0; k < size; ++k) buf[k] = pattern_at(k, size);
      close(go[1]);
      signal_ready(ready[1]);
      wait_go(go[0]);
      for (uint64_t off = 0; off < per; off += size) write_all(fd, buf, size);
      if (close(fd) != 0) die("close");
      if (kind == K_FILE) close(done[2 * i + 1]); /* the reader may start */
      _exit(0);
    }
    pids[npids++] = pid;
  }
  wait_ready(ready[0], pairs); /* every stream exists now */

  /* Consumers: one reader per pair, or (callback) one collector for all. */
  const char *consumer = kind == K_SOCKET ? socket_consumer() : NULL;
  char sock[4096];
  sibling(sock, sizeof sock, dir, ".sock");
  int readers = kind == K_CALLBACK ? 1 : pairs;
  if (kind == K_CALLBACK) {
    pid_t pid = fork_child();
    if (pid < 0) die("fork");
    if (pid == 0) {
      struct lines *l = lines_open(dir);
      close(go[1]);
      signal_ready(ready[1]);
      wait_go(go[0]);
      collect_callback(l, pairs, per, result[1]);
      _exit(0);
    }
    pids[npids++] = pid;
  }
  for (int i = 0; kind == K_SOCKET && i < pairs; ++i) {
    pid_t pid = fork_child();
    if (pid < 0) die("fork");
    if (pid == 0) {
      char name[256], a_size[32], a_per[32], a_ready[16], a_go[16], a_res[16];
      tput_name(name, sizeof name, kind, (int)getppid(), i, size);
      snprintf(a_size, sizeof a_size, "%zu", size);
      snprintf(a_per, sizeof a_per, "%llu", (unsigned long long)per);
      snprintf(a_ready, sizeof a_ready, "%d", ready[1]);
      snprintf(a_go, sizeof a_go, "%d", go[0]);
      snprintf(a_res, sizeof a_res, "%d", result[1]);
      close(go[1]);
      execl(consumer, consumer, "tput", sock, name, a_size, a_per, a_ready, a_go, a_res, (char *)NULL);
      die("exec %s", consumer);
    }
    pids[npids++] = pid;
  }

  for (int i = 0; (kind == K_PIPE || kind == K_FILE || kind == K_STREAM) && i < pairs; ++i) {
    pid_t pid = fork_child();
    if (pid < 0) die("fork");
    if (pid == 0) {
      int fd = -1;
      for (int j = 0; j < pairs; ++j) {
        if (kind == K_PIPE) {
          close(data[2 * j + 1]);
          if (j != i) close(data[2 * j]);
        }
        if (kind == K_FILE) {
          close(done[2 * j + 1]);
          if (j != i) close(done[2 * j]);
        }
      }
      char name[256];
      tput_name(name, sizeof name, kind, (int)getppid(), i, size);
      snprintf(path, sizeof path, "%s/%s", dir, name);
      if (kind == K_PIPE) fd = data[2 * i];
      if (kind == K_STREAM) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die("open %s for reading", path);
      }
      unsigned char *buf = xmalloc(rbuf);
      close(go[1]);
      signal_ready(ready[1]);
      wait_go(go[0]);
      if (kind == K_FILE) {
        wait_go(done[2 * i]); /* EOF once the writer has closed the file */
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die("open %s for reading", path);
      }
      uint64_t got = 0, reads = 0;
      for (;;) {
        ssize_t r = read(fd, buf, rbuf);
        ++reads;
        if (r < 0) {
          if (errno == EINTR) continue;
          die("read");
        }
        if (r == 0) break;
        if (buf[0] != pattern_at(got, size) || buf[r - 1] != pattern_at(got + (uint64_t)r - 1, size)) {
          errno = 0;
          die("pair %d: wrong byte near offset %llu", i, (unsigned long long)got);
        }
        got += (uint64_t)r;
      }
      close(fd);
      if (kind == K_FILE && unlink(path) != 0) die("unlink %s", path);
      if (got != per) {
        errno = 0;
        die("pair %d: read %llu bytes, expected %llu", i, (unsigned long long)got, (unsigned long long)per);
      }
      uint64_t res[2] = {got, reads};
      write_all(result[1], res, sizeof res); /* atomic: < PIPE_BUF */
      _exit(0);
    }
    pids[npids++] = pid;
  }
  for (int i = 0; i < pairs; ++i) {
    if (kind == K_PIPE) {
      close(data[2 * i]);
      close(data[2 * i + 1]);
    }
    if (kind == K_FILE) {
      close(done[2 * i]);
      close(done[2 * i + 1]);
    }
  }
  close(ready[1]);
  close(result[1]);
  wait_ready(ready[0], readers);

  double t0 = now_s();
  close(go[1]);
  int failed = 0;
  for (int i = 0; i < npids; ++i) {
    int st = 0;
    while (waitpid(pids[i], &st, 0) < 0) {
      if (errno != EINTR) die("waitpid");
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
  }
  double t1 = now_s();
  if (failed) {
    errno = 0;
    die("a writer or reader failed");
  }
  uint64_t sum = 0, reads = 0, res[2];
  while (read(result[0], res, sizeof res) == (ssize_t)sizeof res) {
    sum += res[0];
    reads += res[1];
  }
  if (sum != per * (uint64_t)pairs) {
    errno = 0;
    die("read %llu bytes in all, expected %llu", (unsigned long long)sum,
        (unsigned long long)(per * (uint64_t)pairs));
  }
  printf("{\"bytes\": %llu, \"seconds\": %.9f, \"pairs\": %d, \"size\": %zu, \"rbuf\": %zu, "
         "\"reads\": %llu}\n",
         (unsigned long long)sum, t1 - t0, pairs, size, rbuf, (unsigned long long)reads);
  return 0;
}

/* ---- churn ------------------------------------------------------------- */

static const char kPayload[100] = "0123456789012345678901234567890123456789"
                                  "0123456789012345678901234567890123456789"
                                  "012345678901234567\n";

struct fifo_writer {
  const char *path;
};

static void *fifo_writer_main(void *arg) {
  struct fifo_writer *w = arg;
  int fd = open(w->path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open fifo for writing");
  write_all(fd, kPayload, sizeof kPayload);
  close(fd);
  return NULL;
}

static void consume(int fd, const char *what) {
  char buf[4096];
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read %s", what);
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  if (got != sizeof kPayload) {
    errno = 0;
    die("%s: read %zu bytes, expected %zu", what, got, sizeof kPayload);
  }
}

static int mode_churn(int argc, char **argv) {
  if (argc != 5) {
    errno = 0;
    die("usage: churn KIND DIR N");
  }
  const char *kind = argv[2];
  const char *dir = argv[3];
  uint64_t n = parse_u64(argv[4]);
  char path[4096];
  int pid = (int)getpid();
  if (strcmp(kind, "socket") == 0) { /* the whole loop is in the consumer */
    const char *consumer = socket_consumer();
    char sock[4096];
    sibling(sock, sizeof sock, dir, ".sock");
    execl(consumer, consumer, "churn", sock, dir, argv[4], (char *)NULL);
    die("exec %s", consumer);
  }
  struct lines *report = strcmp(kind, "callback") == 0 ? lines_open(dir) : NULL;
  double t0 = now_s();
  if (report != NULL) {
    for (uint64_t i = 0; i < n; ++i) {
      char name[128];
      snprintf(name, sizeof name, "c.%d.%llu", pid, (unsigned long long)i);
      snprintf(path, sizeof path, "%s/%s", dir, name);
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) die("create %s", path);
      write_all(fd, kPayload, sizeof kPayload);
      if (close(fd) != 0) die("close");
      wait_end(report, name, sizeof kPayload);
    }
  } else if (strcmp(kind, "stream") == 0 || strcmp(kind, "file") == 0) {
    int is_file = kind[0] == 'f';
    for (uint64_t i = 0; i < n; ++i) {
      snprintf(path, sizeof path, "%s/c.%d.%llu", dir, pid, (unsigned long long)i);
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) die("create %s", path);
      write_all(fd, kPayload, sizeof kPayload);
      if (close(fd) != 0) die("close");
      fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) die("open %s for reading", path);
      consume(fd, path);
      if (close(fd) != 0) die("close");
      if (is_file && unlink(path) != 0) die("unlink %s", path);
    }
  } else if (strcmp(kind, "fifo") == 0) {
    for (uint64_t i = 0; i < n; ++i) {
      char tmpl[4096];
      snprintf(tmpl, sizeof tmpl, "%s/fifo-XXXXXX", dir);
      if (mkdtemp(tmpl) == NULL) die("mkdtemp");
      if (snprintf(path, sizeof path, "%.4000s/pipe", tmpl) >= (int)sizeof path) die("path too long");
      if (mkfifo(path, 0600) != 0) die("mkfifo");
      struct fifo_writer w = {path};
      pthread_t th;
      if (pthread_create(&th, NULL, fifo_writer_main, &w) != 0) die("pthread_create");
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) die("open fifo for reading");
      consume(fd, path);
      close(fd);
      pthread_join(th, NULL);
      if (unlink(path) != 0 || rmdir(tmpl) != 0) die("cleanup");
    }
  } else {
    errno = 0;
    die("unknown churn kind %s", kind);
  }
  double t1 = now_s();
  printf("{\"files\": %llu, \"seconds\": %.9f}\n", (unsigned long long)n, t1 - t0);
  return 0;
}

/* ---- lat --------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int mode_lat(int argc, char **argv) {
  if (argc != 6) {
    errno = 0;
    die("usage: lat KIND DIR N GAP_US");
  }
  enum kind kind = parse_kind(argv[2]);
  if (kind == K_FILE) {
    errno = 0;
    die("lat: KIND is pipe, stream, socket or callback");
  }
  const char *dir = argv[3];
  uint64_t n = parse_u64(argv[4]);
  uint64_t gap_us = parse_u64(argv[5]);
  const uint64_t warm = 200;
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* precise gaps */
  int ack[2], data[2] = {-1, -1};
  if (pipe(ack) != 0) die("pipe");
  if (kind == K_PIPE && pipe(data) != 0) die("pipe");
  char name[64], path[4096];
  snprintf(name, sizeof name, "lat.%d", (int)getpid());
  snprintf(path, sizeof path, "%s/%s", dir, name);
  const char *consumer = kind == K_SOCKET ? socket_consumer() : NULL;
  struct lines *report = kind == K_CALLBACK ? lines_open(dir) : NULL;

  pid_t pid = fork_child();
  if (pid < 0) die("fork");
  if (pid == 0) { /* writer */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    close(ack[1]);
    int fd = data[1];
    if (kind == K_PIPE) close(data[0]);
    else {
      fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) die("create %s", path);
    }
    unsigned char msg[64];
    memset(msg, 'x', sizeof msg);
    struct timespec gap = {0, (long)(gap_us * 1000)};
    for (uint64_t i = 0; i < warm + n; ++i) {
      char c;
      read_exact(ack[0], &c, 1); /* the reader is ready (or about to block) */
      nanosleep(&gap, NULL);
      uint64_t t = now_ns();
      memcpy(msg, &t, sizeof t);
      write_all(fd, msg, sizeof msg);
    }
    close(fd);
    _exit(0);
  }
  close(ack[0]);
  uint64_t *samples = xmalloc(n * sizeof(uint64_t));
  if (kind == K_SOCKET) {
    /* bench_socket_consumer stamps each message, acknowledges to the
     * writer itself, and sends the samples back. */
    int res[2];
    if (pipe(res) != 0) die("pipe");
    pid_t cpid = fork_child();
    if (cpid < 0) die("fork");
    if (cpid == 0) {
      char sock[4096], a_warm[32], a_n[32], a_ack[16], a_res[16];
      sibling(sock, sizeof sock, dir, ".sock");
      snprintf(a_warm, sizeof a_warm, "%llu", (unsigned long long)warm);
      snprintf(a_n, sizeof a_n, "%llu", (unsigned long long)n);
      snprintf(a_ack, sizeof a_ack, "%d", ack[1]);
      snprintf(a_res, sizeof a_res, "%d", res[1]);
      close(res[0]);
      execl(consumer, consumer, "lat", sock, name, a_warm, a_n, a_ack, a_res, (char *)NULL);
      die("exec %s", consumer);
    }
    close(ack[1]); /* if the consumer dies, the writer sees EOF */
    close(res[1]);
    read_exact(res[0], samples, n * sizeof(uint64_t));
    char c;
    if (read(res[0], &c, 1) != 0) {
      errno = 0;
      die("the socket consumer sent more than %llu samples", (unsigned long long)n);
    }
    close(res[0]);
    int st = 0;
    waitpid(cpid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      errno = 0;
      die("the socket consumer failed");
    }
  } else if (kind == K_CALLBACK) {
    /* bench_callback stamps each message in on_data and reports the
     * difference; the next write may come once the line is read. */
    size_t nlen = strlen(name);
    for (uint64_t i = 0; i < warm + n; ++i) {
      write_all(ack[1], "a", 1);
      for (;;) {
        char *line = lines_next(report);
        if (line[0] != 'L' || line[1] != ' ' || strncmp(line + 2, name, nlen) != 0 || line[2 + nlen] != ' ')
          continue;
        uint64_t d = parse_u64(line + 3 + nlen);
        if (i >= warm) samples[i - warm] = d;
        break;
      }
    }
    wait_end(report, name, 64 * (warm + n));
  } else {
    int fd = data[0];
    if (kind == K_PIPE) close(data[1]);
    else {
      /* The writer creates the name; retry until it exists. */
      for (int tries = 0;; ++tries) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) break;
        if (errno != ENOENT || tries > 10000) die("open %s for reading", path);
        usleep(200);
      }
    }
    unsigned char msg[64];
    for (uint64_t i = 0; i < warm + n; ++i) {
      write_all(ack[1], "a", 1);
      read_exact(fd, msg, sizeof msg);
      uint64_t t1 = now_ns(), t0;
      memcpy(&t0, msg, sizeof t0);
      if (i >= warm) samples[i - warm] = t1 - t0;
    }
    char c;
    if (read(fd, &c, 1) != 0) {
      errno = 0;
      die("expected EOF after the last sample");
    }
    close(fd);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    errno = 0;
    die("the writer failed");
  }
  qsort(samples, n, sizeof(uint64_t), cmp_u64);
  double sum = 0;
  for (uint64_t i = 0; i < n; ++i) sum += (double)samples[i];
  printf("{\"samples\": %llu, \"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, \"min_us\": %.3f, "
         "\"max_us\": %.3f, \"mean_us\": %.3f}\n",
         (unsigned long long)n, samples[n / 2] / 1e3, samples[(n * 90) / 100] / 1e3,
         samples[(n * 99) / 100] / 1e3, samples[0] / 1e3, samples[n - 1] / 1e3, sum / (double)n / 1e3);
  return 0;
}

/* ---- rss --------------------------------------------------------------- */

static uint64_t proc_status_kib(int pid, const char *key) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  uint64_t v = 0;
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      v = strtoull(line + klen + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

struct rss_ctx {
  const char *dir;
  uint64_t per_stream;
  size_t chunk;
  const unsigned char *wbuf;
  atomic_int created;
  atomic_int writers_done;
  atomic_int failures;
};

struct rss_arg {
  struct rss_ctx *ctx;
  int index;
};

static void *rss_writer(void *p) {
  struct rss_arg *a = p;
  struct rss_ctx *c = a->ctx;
  char path[4096];
  snprintf(path, sizeof path, "%s/r.%d", c->dir, a->index);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    atomic_fetch_add(&c->failures, 1);
    atomic_fetch_add(&c->created, 1);
    return NULL;
  }
  atomic_fetch_add(&c->created, 1);
  for (uint64_t off = 0; off < c->per_stream;) {
    size_t k = c->per_stream - off < c->chunk ? (size_t)(c->per_stream - off) : c->chunk;
    ssize_t w = write(fd, c->wbuf, k);
    if (w < 0) {
      if (errno == EINTR) continue;
      atomic_fetch_add(&c->failures, 1);
      break;
    }
    off += (uint64_t)w;
  }
  close(fd);
  atomic_fetch_add(&c->writers_done, 1);
  return NULL;
}

static void *rss_reader(void *p) {
  struct rss_arg *a = p;
  struct rss_ctx *c = a->ctx;
  char path[4096];
  snprintf(path, sizeof path, "%s/r.%d", c->dir, a->index);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    atomic_fetch_add(&c->failures, 1);
    return NULL;
  }
  size_t cap = 128 * 1024;
  unsigned char *buf = malloc(cap);
  uint64_t got = 0;
  for (;;) {
    ssize_t r = read(fd, buf, cap);
    if (r < 0) {
      if (errno == EINTR) continue;
      atomic_fetch_add(&c->failures, 1);
      break;
    }
    if (r == 0) break;
    got += (uint64_t)r;
  }
  free(buf);
  close(fd);
  if (got != c->per_stream) atomic_fetch_add(&c->failures, 1);
  return NULL;
}

static int mode_rss(int argc, char **argv) {
  if (argc != 8) {
    errno = 0;
    die("usage: rss DIR N PER_STREAM CHUNK DAEMON_PID SETTLE_MS");
  }
  struct rss_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.dir = argv[2];
  int n = (int)parse_u64(argv[3]);
  ctx.per_stream = parse_u64(argv[4]);
  ctx.chunk = (size_t)parse_u64(argv[5]);
  int daemon = (int)parse_u64(argv[6]);
  uint64_t settle_ms = parse_u64(argv[7]);
  raise_nofile((rlim_t)n * 2 + 64);
  unsigned char *wbuf = xmalloc(ctx.chunk);
  memset(wbuf, 'w', ctx.chunk);
  ctx.wbuf = wbuf;

  uint64_t hwm_idle = proc_status_kib(daemon, "VmHWM");
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 128 * 1024);
  pthread_t *wt = calloc((size_t)n, sizeof(pthread_t));
  pthread_t *rt = calloc((size_t)n, sizeof(pthread_t));
  struct rss_arg *args = calloc((size_t)n, sizeof(struct rss_arg));
  double t0 = now_s();
  for (int i = 0; i < n; ++i) {
    args[i].ctx = &ctx;
    args[i].index = i;
    if (pthread_create(&wt[i], &attr, rss_writer, &args[i]) != 0) die("pthread_create");
  }
  while (atomic_load(&ctx.created) < n) usleep(1000);
  /* Settle: every writer has either finished or is parked on the cap. */
  uint64_t last = proc_status_kib(daemon, "VmRSS");
  double stable_since = now_s();
  while (atomic_load(&ctx.writers_done) < n) {
    usleep(20000);
    uint64_t cur = proc_status_kib(daemon, "VmRSS");
    if (cur > last + 1024) {
      last = cur;
      stable_since = now_s();
    } else if ((now_s() - stable_since) * 1000.0 >= (double)settle_ms) {
      break;
    }
    if (now_s() - t0 > 120) break;
  }
  double t_stall = now_s();
  uint64_t hwm_stalled = proc_status_kib(daemon, "VmHWM");
  uint64_t rss_stalled = proc_status_kib(daemon, "VmRSS");
  int done_at_stall = atomic_load(&ctx.writers_done);
  struct statvfs sv;
  uint64_t budget_used = 0;
  if (statvfs(ctx.dir, &sv) == 0) budget_used = (uint64_t)(sv.f_blocks - sv.f_bfree) * sv.f_frsize;

  for (int i = 0; i < n; ++i)
    if (pthread_create(&rt[i], &attr, rss_reader, &args[i]) != 0) die("pthread_create");
  for (int i = 0; i < n; ++i) pthread_join(wt[i], NULL);
  for (int i = 0; i < n; ++i) pthread_join(rt[i], NULL);
  double t1 = now_s();
  uint64_t hwm_end = proc_status_kib(daemon, "VmHWM");
  uint64_t rss_end = proc_status_kib(daemon, "VmRSS");
  int failures = atomic_load(&ctx.failures);
  printf("{\"streams\": %d, \"per_stream\": %llu, \"chunk\": %zu, \"hwm_idle_kib\": %llu, "
         "\"hwm_stalled_kib\": %llu, \"rss_stalled_kib\": %llu, \"hwm_end_kib\": %llu, "
         "\"rss_end_kib\": %llu, \"budget_used_at_stall\": %llu, \"writers_done_at_stall\": %d, "
         "\"stall_seconds\": %.3f, \"drain_seconds\": %.3f, \"failures\": %d}\n",
         n, (unsigned long long)ctx.per_stream, ctx.chunk, (unsigned long long)hwm_idle,
         (unsigned long long)hwm_stalled, (unsigned long long)rss_stalled, (unsigned long long)hwm_end,
         (unsigned long long)rss_end, (unsigned long long)budget_used, done_at_stall, t_stall - t0,
         t1 - t_stall, failures);
  return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  g_main = getpid();
  if (argc < 2) {
    fprintf(stderr, "usage: io_helper tput|churn|lat|rss ...\n");
    return 2;
  }
  if (strcmp(argv[1], "tput") == 0) return mode_tput(argc, argv);
  if (strcmp(argv[1], "churn") == 0) return mode_churn(argc, argv);
  if (strcmp(argv[1], "lat") == 0) return mode_lat(argc, argv);
  if (strcmp(argv[1], "rss") == 0) return mode_rss(argc, argv);
  fprintf(stderr, "io_helper: unknown mode %s\n", argv[1]);
  return 2;
}
