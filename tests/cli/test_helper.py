"""capturefs as a mount helper and a background daemon (issue 15 item 1,
issue 12 item 7), for real:

- `mount -t fuse.capturefs none DIR -o ...`: mount(8) runs mount.fuse3,
  which runs `capturefs none DIR -o ...` found on PATH; capturefs's own
  options come in -o, mixed with FUSE ones and mount(8)'s (x-*, _netdev);
- an fstab line of type fuse.capturefs (`mount -T FSTAB DIR`);
- a background daemon's warning reaches its --log-file.

Needs root (mount(8) with -t), /dev/fuse, mount.fuse3 and fusermount3;
skips saying which is missing. Every mount is undone, also on failure.

mount(8) runs its helpers with a fixed PATH (/usr/local/sbin:...:/bin),
so mount.fuse3 finds `capturefs` only where an installed one would be.
The test does not install anything: it runs in a private mount namespace
of its own, where a directory holding a `capturefs` link to the binary
under test is bind-mounted over /usr/local/sbin. Nothing outside the test
sees that, nor its mounts.
"""

import ctypes
import os
import shutil
import subprocess
import tempfile
import time
import unittest

CAPTUREFS = os.path.abspath(os.environ.get("CAPTUREFS", "capturefs"))


def missing():
    if os.geteuid() != 0:
        return "mount -t needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    for tool in ("mount", "umount", "fusermount3"):
        if shutil.which(tool) is None:
            return "no %s" % tool
    if not any(os.path.exists(p) for p in ("/sbin/mount.fuse3", "/usr/sbin/mount.fuse3")):
        return "no mount.fuse3 (package fuse3)"
    return None


def fstype(path):
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == path:
                return fields[2]
    return None


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def eventually(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


CLONE_NEWNS = 0x00020000


@unittest.skipIf(missing(), missing() or "")
class Helper(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS) != 0:
            raise unittest.SkipTest("no private mount namespace: unshare: %s" % os.strerror(ctypes.get_errno()))
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        cls.bindir = tempfile.mkdtemp(prefix="capturefs-helper-bin-")
        os.symlink(CAPTUREFS, os.path.join(cls.bindir, "capturefs"))
        subprocess.run(["mount", "--bind", cls.bindir, "/usr/local/sbin"], check=True)

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["umount", "/usr/local/sbin"], check=False)
        shutil.rmtree(cls.bindir, ignore_errors=True)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="capturefs-helper-")
        self.mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(self.mnt)
        self.env = dict(os.environ)

    def tearDown(self):
        if fstype(self.mnt) is not None:
            subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_ok(self, *args):
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=self.env)
        self.assertEqual(p.returncode, 0, "%s: %s%s" % (" ".join(args), p.stdout, p.stderr))
        return p.stdout

    def check_mount(self, sock, log):
        self.assertEqual(fstype(self.mnt), "fuse.capturefs")
        self.assertEqual(os.getxattr(self.mnt, "user.capturefs.socket").decode(), sock)
        with open(os.path.join(self.mnt, "a.txt"), "w") as f:
            f.write("via mount(8)\n")
        self.assertIn("a.txt", self.run_ok(CAPTUREFS, "status", self.mnt))
        self.assertEqual(self.run_ok(CAPTUREFS, "cat", os.path.join(self.mnt, "a.txt")), "via mount(8)\n")
        # The -o options took effect: -o verbose logs the mount, with the caps given.
        self.assertTrue(eventually(lambda: "mounted" in read(log)))
        return read(log)

    def test_mount_t_fuse_capturefs_with_capturefs_options_in_o(self):
        sock, log = os.path.join(self.tmp, "s.sock"), os.path.join(self.tmp, "log")
        self.run_ok("mount", "-t", "fuse.capturefs", "none", self.mnt, "-o",
                    "max_memory=64M,max_stream=8M,socket=%s,log_file=%s,verbose,hold=*.zip,"
                    "allow_other,x-systemd.automount,_netdev,nofail" % (sock, log))
        text = self.check_mount(sock, log)
        self.assertIn("max-memory 64 MiB", text)
        self.assertIn("max-stream 8 MiB", text)
        self.run_ok("umount", self.mnt)
        self.assertTrue(eventually(lambda: not os.path.exists(sock)), "the daemon did not end")

    def test_an_fstab_line(self):
        sock, log = os.path.join(self.tmp, "f.sock"), os.path.join(self.tmp, "flog")
        fstab = os.path.join(self.tmp, "fstab")
        with open(fstab, "w") as f:
            f.write("# a test fstab\n")
            f.write("capturefs %s fuse.capturefs noauto,nofail,max_memory=32M,socket=%s,log_file=%s,verbose,"
                    "x-systemd.after=network.target 0 0\n" % (self.mnt, sock, log))
        self.run_ok("mount", "-T", fstab, self.mnt)
        self.assertIn("max-memory 32 MiB", self.check_mount(sock, log))
        self.run_ok("umount", self.mnt)

    def test_a_background_daemons_warning_reaches_its_log_file(self):
        log = os.path.join(self.tmp, "daemon.log")
        self.run_ok(CAPTUREFS, "mount", self.mnt, "--log-file", log, "--exec", "cat >/dev/null; exit 3")
        with open(os.path.join(self.mnt, "warned.txt"), "w") as f:
            f.write("x")
        ok = eventually(lambda: "warned.txt" in read(log))
        text = read(log)
        self.run_ok(CAPTUREFS, "umount", self.mnt)
        self.assertTrue(ok, text)
        line = [l for l in text.splitlines() if "warned.txt" in l][0]
        self.assertIn("warning", line)
        self.assertIn("exit 3", line)
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* capturefs\[\d+\]: ")


if __name__ == "__main__":
    unittest.main()
