"""The mount fixture of the Python tests (tests/compat/compat.py,
tests/socket/test_socket.py): a `capturefs mount` daemon in a private temp
dir, mounted with --ready-fd and --socket, and unmounted at the end.

    why = fuse_unavailable(CAPTUREFS)       # a reason to skip, or None
    d = Daemon(CAPTUREFS, "--some-flag", prefix="capturefs-x.")
    d.at("name")                            # a path in the mount
    problems = d.stop()                     # "" when all went well

Waits are bounded failure guards on real conditions (the ready line, the
daemon's exit); nothing sleeps to synchronise.
"""
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Optional


def fuse_unavailable(capturefs: str) -> Optional[str]:
    """Why `capturefs mount` cannot run here, or None if it can."""
    if not capturefs:
        return "CAPTUREFS is not set (run through meson test, or set it to build/capturefs)"
    if not os.access(capturefs, os.X_OK):
        return "CAPTUREFS=%s is not executable" % capturefs
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())


class Daemon:
    """`capturefs mount MNT -f --ready-fd N --socket SOCK EXTRA...` in a
    private temp dir (PREFIX.XXXXXX): MNT is DIR/mnt, SOCK DIR/capturefs.sock.

    The constructor returns once the daemon wrote "ready\\n" on the ready fd;
    anything else (EOF: the mount failed, or nothing within `wait` seconds)
    kills the daemon, removes the temp dir and raises RuntimeError with the
    daemon's stderr. `world_reachable` makes the temp dir 0755, so that
    another user can reach the socket (its own mode still applies).
    """

    def __init__(self, capturefs: str, *extra: str, prefix: str = "capturefs-mount.",
                 wait: float = 30.0, world_reachable: bool = False) -> None:
        self.wait = wait
        self.root = tempfile.mkdtemp(prefix=prefix)
        if world_reachable:
            os.chmod(self.root, 0o755)
        self.mnt = os.path.join(self.root, "mnt")
        os.mkdir(self.mnt)
        self.sock = os.path.join(self.root, "capturefs.sock")
        self.err_path = os.path.join(self.root, "daemon.err")
        r, w = os.pipe()
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([capturefs, "mount", self.mnt, "-f", "--ready-fd", str(w),
                                          "--socket", self.sock, *extra],
                                         pass_fds=[w], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        os.close(w)
        got = b""
        deadline = time.monotonic() + wait
        while b"\n" not in got and time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
        os.close(r)
        if got != b"ready\n":
            self.proc.kill()
            self.proc.wait()
            why = self.stderr()
            shutil.rmtree(self.root, ignore_errors=True)
            raise RuntimeError("capturefs mount %s failed (ready fd gave %r); stderr:\n%s"
                               % (" ".join(extra), got, why))

    def stderr(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def at(self, name: str) -> str:
        return os.path.join(self.mnt, name)

    def stop(self, keep: bool = False) -> str:
        """Unmounts (retrying while busy) and reaps the daemon; returns what
        went wrong ("" if nothing): an unmount error, a daemon that did not
        exit (then killed) or exited non-zero, a socket left behind, a mount
        still there (then detached lazily). The temp dir is removed unless
        `keep` or something is still mounted in it."""
        problems = []
        why = ""
        for _ in range(100):
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, text=True)
            if r.returncode == 0:
                why = ""
                break
            why = r.stderr.strip()
            if "busy" not in why:
                break
            time.sleep(0.05)  # a file still being released (retry guard, not synchronisation)
        if why:
            problems.append("fusermount3 -u: %s" % why)
        try:
            rc = self.proc.wait(timeout=self.wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            problems.append("the daemon did not exit after the unmount (killed)")
        if rc != 0:
            problems.append("the daemon exited with status %d" % rc)
        if os.path.lexists(self.sock):
            problems.append("the daemon left its socket %s behind" % self.sock)
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
            problems.append("still mounted after the daemon exited (lazily unmounted)")
        if problems:
            problems.append("daemon stderr:\n" + _indent(self.stderr() or "(empty)"))
        if not keep and not os.path.ismount(self.mnt):
            shutil.rmtree(self.root, ignore_errors=True)
        return "\n".join(problems)

    def kill(self) -> None:
        """After a hang: unmount lazily, kill the daemon, reap it."""
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
