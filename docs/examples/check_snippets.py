#!/usr/bin/env python3
"""Checks that code blocks in markdown pages are copies of compiled files.

A fenced block right after a line

    <!-- snippet: PATH -->

(PATH relative to the source root) must be identical to that file, so that
an example shown in the docs is the one the build compiles.

    check_snippets.py SOURCE_ROOT PAGE.md...

Exits 1, naming the page and the file, when a block differs or a page has
no snippet marker at all.
"""

import os
import re
import sys

MARKER = re.compile(r"^<!-- snippet: (\S+) -->$")


def blocks(text):
    """Yields (path, block text) for every marked fenced block."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        j = i + 1
        if j >= len(lines) or not lines[j].startswith("```"):
            yield m.group(1), None
            continue
        end = next((k for k in range(j + 1, len(lines)) if lines[k] == "```"), None)
        yield m.group(1), None if end is None else "\n".join(lines[j + 1:end]) + "\n"


def main(argv):
    root, pages = argv[1], argv[2:]
    failed = False
    for page in pages:
        with open(page, encoding="utf-8") as f:
            found = list(blocks(f.read()))
        if not found:
            print(f"{page}: no <!-- snippet: PATH --> marker")
            failed = True
        for path, block in found:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                want = f.read()
            if block is None:
                print(f"{page}: the snippet marker for {path} is not followed by a fenced block")
                failed = True
            elif block != want:
                print(f"{page}: the code block differs from {path}; copy the file into the page")
                failed = True
            else:
                print(f"ok {page}: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
