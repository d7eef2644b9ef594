#!/usr/bin/env python3
"""Checks the direction of the layers' #include lines (README, Architecture).

Layers, bottom to top: core < proto < server < fuse < lib < cli. A layer
includes only the layers below it, with these exceptions, all checked:
  - proto is pure: it includes nothing from another layer (not core);
  - server (socket delivery, a library option) is on core and proto only;
  - fuse is the only layer that includes fuse_lowlevel.h or any FUSE header,
    and it knows nothing of the socket protocol (not proto, not server);
  - cli reaches FUSE only through lib: not fuse;
  - examples use the public API only (capturefs/capturefs.hpp).
A header's layer is the first component of its path under src/
("capturefs/" is lib's public header). Usage: check_includes.py SRC_DIR
"""
import pathlib
import re
import sys

ORDER = ["core", "proto", "server", "fuse", "lib", "cli"]
FORBIDDEN = {
    "proto": {"core"},
    "fuse": {"proto", "server"},
    "cli": {"fuse"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')
FUSE_HEADER = re.compile(r'^(fuse3/|fuse(_[a-z_]+)?\.h$|cuse_lowlevel\.h$)')


def layer_of(header):
    first = header.split("/", 1)[0] if "/" in header else None
    if first == "capturefs":
        return "lib"
    return first if first in ORDER else None


def allowed(layer):
    below = set(ORDER[: ORDER.index(layer) + 1])
    return below - FORBIDDEN.get(layer, set())


def main(src):
    src = pathlib.Path(src)
    errors = []
    checked = 0
    for path in sorted(src.rglob("*")):
        if path.suffix not in {".hpp", ".cpp", ".h", ".c"}:
            continue
        rel = path.relative_to(src)
        layer = rel.parts[0]
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            checked += 1
            header = m.group(1)
            where = f"src/{rel}:{lineno}: {line.strip()}"
            if FUSE_HEADER.match(header):
                if layer != "fuse":
                    errors.append(f"{where}: only src/fuse may include FUSE headers")
                continue
            target = layer_of(header)
            if target is None:
                continue  # system or third-party header
            if layer == "examples":
                if header != "capturefs/capturefs.hpp":
                    errors.append(f"{where}: examples use the public API only")
                continue
            if layer not in ORDER:
                errors.append(f"{where}: src/{layer} is not a known layer (add it to {__file__})")
                continue
            if target not in allowed(layer):
                errors.append(f"{where}: {layer} may include {sorted(allowed(layer))} only")
    for e in errors:
        print(e)
    print(f"{checked} #include lines checked, {len(errors)} layering violations")
    return 1 if errors or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "src"))
