"""`meson install` into a DESTDIR, and each piece checked (issue 15 item 2):

- the binary runs from the installed tree;
- the man page renders with `man -l`, and describes every option of every
  `capturefs SUBCOMMAND --help` (and no option that does not exist), so
  the two cannot drift;
- the docs, the LICENSE and the bash completion (`bash -n`) are there;
- the systemd unit template passes `systemd-analyze verify` (skipped, with
  a message, without systemd-analyze);
- `import capturefs` works from the installed tree with no pip;
- `pip install --no-build-isolation ./python` works offline, into a venv
  with --system-site-packages (Debian's pip refuses system installs).

Needs $CAPTUREFS_BUILD (the meson build directory) and $CAPTUREFS_SRC.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

BUILD = os.environ.get("CAPTUREFS_BUILD", "build")
SRC = os.environ.get("CAPTUREFS_SRC", ".")
SUBCOMMANDS = ["mount", "umount", "status", "peek", "cat", "watch", "take"]
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def run(args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    if p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout


class Install(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="capturefs-install-")
        cls.dest = os.path.join(cls.tmp, "dest")
        run(["meson", "install", "-C", BUILD, "--destdir", cls.dest, "--no-rebuild", "--quiet"])
        prefix = run(["meson", "introspect", BUILD, "--buildoptions"])
        m = re.search(r'"name": "prefix", "value": "([^"]*)"', prefix)
        cls.prefix = cls.dest + (m.group(1) if m else "/usr/local")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def find(self, pattern):
        hits = glob.glob(os.path.join(self.dest, "**", pattern), recursive=True)
        self.assertTrue(hits, "%s is not installed under %s" % (pattern, self.dest))
        return hits[0]

    def binary(self, *args):
        exe = os.path.join(self.prefix, "bin", "capturefs")
        libdirs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(self.dest, "**", "libcapturefs.so*"),
                                                                 recursive=True)})
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs))
        return run([exe, *args], env=env)

    def test_the_binary_runs(self):
        self.assertIn("capturefs 0.1.0", self.binary("--version"))

    def test_the_man_page_renders_and_matches_every_help(self):
        page = self.find("capturefs.1")
        self.assertIn("/man1/", page)
        if shutil.which("man") is None:
            self.skipTest("man is not installed (scripts/setup-deps.sh installs man-db)")
        text = run(["man", "-l", "-P", "cat", page], env=dict(os.environ, MANWIDTH="100"))
        self.assertIn("capturefs peek", text)
        self.assertIn("Reading a file in the mount consumes it", text)
        with open(page) as f:
            source = f.read().replace("\\-", "-")
        documented = set(re.findall(r"--[a-z][a-z-]+", source))
        offered = set()
        for sub in SUBCOMMANDS:
            helptext = self.binary(sub, "--help")
            for opt in set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", helptext)):
                if opt in ("--help",):
                    continue
                offered.add(opt)
                with self.subTest(sub=sub, option=opt):
                    self.assertIn(opt, documented, "capturefs %s %s is not in the man page" % (sub, opt))
        for opt in sorted(documented - offered - {"--help", "--version"}):
            with self.subTest(option=opt):
                self.fail("the man page describes %s, which no --help offers" % opt)

    def test_docs_license_and_completion(self):
        self.find("doc/capturefs/protocol.md")
        self.find("doc/capturefs/LICENSE")
        completion = self.find("bash-completion/completions/capturefs")
        run(["bash", "-n", completion])
        out = run(["bash", "-c", "source %s; COMP_WORDS=(capturefs pe); COMP_CWORD=1; _capturefs; "
                   "echo ${COMPREPLY[@]}" % completion])
        self.assertEqual(out.split(), ["peek"])

    def test_the_systemd_unit_verifies(self):
        unit = self.find("systemd/system/capturefs@.service")
        with open(unit) as f:
            text = f.read()
        self.assertIn("ExecStart=" + self.prefix[len(self.dest):] + "/bin/capturefs mount --foreground", text)
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze is not installed: the unit is not verified")
        # An instance of the template, with the binary of the installed tree
        # (verify checks that ExecStart= names an executable).
        units = os.path.join(self.tmp, "units")
        os.makedirs(units, exist_ok=True)
        installed_exe = self.prefix[len(self.dest):] + "/bin/capturefs"
        with open(os.path.join(units, "capturefs@.service"), "w") as f:
            f.write(text.replace(installed_exe, self.prefix + "/bin/capturefs"))
        inst = os.path.join(units, "capturefs@srv-capture.service")
        if not os.path.exists(inst):
            os.symlink("capturefs@.service", inst)
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", inst], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("capturefs@", p.stdout + p.stderr)

    def test_python_import_from_the_installed_tree(self):
        init = self.find("capturefs/__init__.py")
        if "/site-packages/" not in init and "/dist-packages/" not in init:
            self.fail("the Python package went to %s, not to a Python path" % init)
        root = os.path.dirname(os.path.dirname(init))
        out = run([SYSTEM_PYTHON, "-c", "import capturefs, capturefs.protocol as p; print(p.VERSION, capturefs.__file__)"],
                  env=dict(os.environ, PYTHONPATH=root, PYTHONNOUSERSITE="1"), cwd=self.tmp)
        self.assertTrue(out.startswith("3 " + root), out)

    def test_pip_install_without_build_isolation_offline(self):
        try:
            run([SYSTEM_PYTHON, "-c", "import setuptools, venv, pip"])
        except AssertionError:
            self.skipTest("%s has no setuptools, venv or pip (python3-setuptools, python3-venv, python3-pip)"
                          % SYSTEM_PYTHON)
        # A copy: pip builds in the source directory.
        src = os.path.join(self.tmp, "python-src")
        shutil.copytree(os.path.join(SRC, "python"), src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        venv = os.path.join(self.tmp, "venv")
        run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", venv])
        env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        run([os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index", src], env=env)
        out = run([os.path.join(venv, "bin", "python"), "-c", "import capturefs; print(capturefs.__file__)"],
                  env=env, cwd=self.tmp)
        self.assertIn(os.path.join(venv, "lib"), out)


if __name__ == "__main__":
    unittest.main()
