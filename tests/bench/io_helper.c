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
 *       PAIRS writer/reader pairs run at once; TOTAL bytes are split evenly
 *       between them; writes are exactly SIZE bytes, reads ask for RBUF.
 *       Files are created and opened before the clock starts; the clock stops
 *       when every reader has seen EOF and every process has exited. Also
 *       reports the number of read() calls (reads, EOF included).
 *
 *   io_helper churn KIND DIR N
 *       N times, in one process: create, write 100 B, close, then consume.
 *       KIND stream : open(O_CREAT|O_EXCL), write, close; open(O_RDONLY),
 *                     read to EOF, close (capturefs drops the name itself)
 *            file   : the same, plus unlink() (a regular file)
 *            fifo   : the mkfifo recipe: mkdtemp(DIR/...), mkfifo, a writer
 *                     *thread* opens, writes 100 B, closes; the caller opens
 *                     for reading, reads to EOF; join, unlink, rmdir
 *
 *   io_helper lat KIND DIR N GAP_US
 *       N samples (after 200 warm-up ones) of the time from just before a
 *       64 B write() (the writer stores its CLOCK_MONOTONIC time in the
 *       bytes) to the moment the reader, already blocked in read(), has them.
 *       The reader acknowledges on a side pipe; the writer then waits GAP_US
 *       so that the reader is blocked again before the next write.
 *       KIND pipe or stream (a capturefs path in DIR).
 *
 *   io_helper rss DIR N PER_STREAM CHUNK DAEMON_PID SETTLE_MS
 *       N writer threads each create DIR/r.I and write PER_STREAM bytes in
 *       CHUNK-sized writes, with no reader. Once every stream exists, waits
 *       until the daemon's VmRSS has not grown for SETTLE_MS (the writers
 *       are parked on the memory cap) and records VmHWM; then N reader
 *       threads drain every stream concurrently (checking every byte
 *       count) and VmHWM is recorded again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "io_helper: ");
  vfprintf(stderr, fmt, ap);
  if (errno != 0) fprintf(stderr, ": %s", strerror(errno));
  fprintf(stderr, "\n");
  va_end(ap);
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

enum kind { K_PIPE, K_FILE, K_STREAM };

static enum kind parse_kind(const char *s) {
  if (strcmp(s, "pipe") == 0) return K_PIPE;
  if (strcmp(s, "file") == 0) return K_FILE;
  if (strcmp(s, "stream") == 0) return K_STREAM;
  errno = 0;
  die("unknown kind %s", s);
  return K_PIPE;
}

static void wait_go(int go_fd) {
  char c;
  ssize_t r;
  do r = read(go_fd, &c, 1);
  while (r < 0 && errno == EINTR);
  /* EOF: the parent closed the write end: go. */
}

static void signal_ready(int ready_fd) { write_all(ready_fd, "r", 1); }

static void wait_ready(int ready_fd, int count) {
  char buf[256];
  int got = 0;
  while (got < count) {
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
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      int fd = -1;
      if (kind == K_PIPE) {
        fd = data[2 * i + 1];
      } else {
        snprintf(path, sizeof path, "%s/%c.%d.%d", dir, kind == K_FILE ? 'f' : 't', (int)getppid(), i);
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

  for (int i = 0; i < pairs; ++i) {
    pid_t pid = fork();
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
      snprintf(path, sizeof path, "%s/%c.%d.%d", dir, kind == K_FILE ? 'f' : 't', (int)getppid(), i);
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
  wait_ready(ready[0], pairs);

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
  double t0 = now_s();
  if (strcmp(kind, "stream") == 0 || strcmp(kind, "file") == 0) {
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
    die("lat: KIND is pipe or stream");
  }
  const char *dir = argv[3];
  uint64_t n = parse_u64(argv[4]);
  uint64_t gap_us = parse_u64(argv[5]);
  const uint64_t warm = 200;
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* precise gaps */
  int ack[2], data[2] = {-1, -1};
  if (pipe(ack) != 0) die("pipe");
  if (kind == K_PIPE && pipe(data) != 0) die("pipe");
  char path[4096];
  snprintf(path, sizeof path, "%s/lat.%d", dir, (int)getpid());

  pid_t pid = fork();
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
  uint64_t *samples = xmalloc(n * sizeof(uint64_t));
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
