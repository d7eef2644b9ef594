"""The capturefs command line's messages for common mistakes (issue 15,
item 6): each names what failed and why, with the right errno text or
none, one "capturefs:" prefix, and "did you mean" for a near miss. Runs
the binary ($CAPTUREFS) and checks its exit status and stderr.

Mounts nothing: the mount cases fail before mounting (a missing or bad
mountpoint, a bad -o, a bad --spill-dir are all checked first).
"""

import os
import subprocess
import tempfile
import unittest

CAPTUREFS = os.environ.get("CAPTUREFS", "capturefs")


def run(*args, env=None):
    p = subprocess.run([CAPTUREFS, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60, env=env)
    return p.returncode, p.stdout, p.stderr


class Messages(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="capturefs-msg-")
        self.dir = os.path.join(self.tmp.name, "mnt")
        os.mkdir(self.dir)

    def tearDown(self):
        if os.path.ismount(self.dir):  # a case that should have failed mounted
            subprocess.run(["fusermount3", "-u", self.dir], check=False)
        self.tmp.cleanup()

    def check(self, args, code, *parts, absent=()):
        rc, _, err = run(*args)
        self.assertEqual(rc, code, err)
        for p in parts:
            self.assertIn(p, err)
        for p in absent:
            self.assertNotIn(p, err)
        # One prefix per line, never "capturefs: error: capturefs: ...".
        for line in err.splitlines():
            self.assertLessEqual(line.count("capturefs:"), 1, line)
        return err

    def test_an_unknown_command_is_named_with_a_suggestion(self):
        self.check(["moutn", self.dir], 2, "unknown command 'moutn'", "did you mean 'mount'?")
        self.check(["stauts"], 2, "unknown command 'stauts'", "did you mean 'status'?")
        self.check(["frobnicate"], 2, "unknown command 'frobnicate'", "commands:",
                   absent=["A subcommand is required"])

    def test_a_missing_mountpoint_says_so_without_a_wrong_errno(self):
        missing = os.path.join(self.tmp.name, "nope")
        self.check(["mount", missing], 1, "mountpoint %s does not exist" % missing,
                   absent=["Invalid argument", "Input/output error"])

    def test_a_mountpoint_that_is_a_file_or_not_empty(self):
        f = os.path.join(self.tmp.name, "file")
        open(f, "w").close()
        self.check(["mount", f], 1, "is not a directory", absent=["Invalid argument"])
        open(os.path.join(self.dir, "x"), "w").close()
        self.check(["mount", self.dir], 1, "is not empty", absent=["Invalid argument"])

    def test_a_bad_o_option_gets_its_own_message(self):
        self.check(["mount", self.dir, "-o", "max_memry=64M"], 2, "unknown mount option 'max_memry'",
                   "did you mean 'max_memory'?", absent=["Input/output error"])
        self.check(["mount", self.dir, "-o", "allow_other,frobnicate"], 2, "unknown mount option 'frobnicate'",
                   absent=["Input/output error"])
        self.check(["mount", self.dir, "-o", "max_memory"], 2, "'max_memory' needs a value")
        self.check(["mount", self.dir, "-o", "no_spill=1"], 2, "'no_spill' takes no value")
        self.check(["mount", self.dir, "-o", "max_memory=lots"], 2, "--max-memory", "'lots' is not a size")

    def test_a_bad_spill_directory_names_it_and_the_cause_once(self):
        missing = os.path.join(self.tmp.name, "nospill")
        err = self.check(["mount", self.dir, "--spill-dir", missing], 1, "spill directory", missing,
                         "No such file or directory")
        self.assertEqual(err.count("No such file or directory"), 1, err)

    def test_clients_say_which_daemon_they_could_not_find(self):
        self.check(["status", self.dir], 2, "%s is not a capturefs mount" % self.dir)
        self.check(["cat", os.path.join(self.dir, "x")], 2, "is not in a capturefs mount")
        sock = os.path.join(self.tmp.name, "none.sock")
        self.check(["cat", "--socket", sock, "x"], 1, sock, "cannot connect", "No such file or directory")
        self.check(["take", "--socket", sock], 2, "--to DIR or --exec CMD")

    def test_an_unknown_option_is_named(self):
        self.check(["mount", self.dir, "--max-memroy", "1G"], 2, "--max-memroy")


if __name__ == "__main__":
    unittest.main()
