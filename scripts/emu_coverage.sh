#!/usr/bin/env bash
# Line coverage (gcov) of the CUDA sources the SIMT emulator runs: builds the
# emulator with --coverage in build/emu-coverage, runs the emulated CUDA suite,
# and prints one line per covered .cu/.cuh file (device and host code alike).
#   scripts/emu_coverage.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/emu-coverage
MLX_EMU_BUILD_DIR="$build" bash scripts/build_emu.sh --coverage >/dev/null
find "$build" -name '*.gcda' -delete
MLX_EMU_BUILD_DIR="$build" bash scripts/test_emu.sh "$@" || true
.venv/bin/python - "$build" <<'PY'
import collections, glob, os, re, subprocess, sys
build = sys.argv[1]
objects = glob.glob(os.path.join(build, "CMakeFiles", "_emu.dir", "emu", "*.gcda"))
lines = collections.defaultdict(dict)  # file -> {line: executed}
for gcda in objects:
    out = subprocess.run(["gcov", "-i", "-t", "-o", os.path.dirname(gcda), gcda], capture_output=True, text=True).stdout
    import json
    for record in (json.loads(l) for l in out.splitlines() if l.startswith("{")):
        for f in record["files"]:
            path = os.path.relpath(f["file"]) if os.path.isabs(f["file"]) else f["file"]
            if not re.match(r"csrc/(?!emu/)[^/]+/[^/]+\.cuh?$", path):
                continue
            for l in f["lines"]:
                lines[path][l["line_number"]] = lines[path].get(l["line_number"], False) or l["count"] > 0
total_hit = total = 0
print(f"{'file':44s} {'lines':>6s} {'hit':>6s} {'cover':>6s}")
for path in sorted(lines):
    hit, n = sum(lines[path].values()), len(lines[path])
    total_hit, total = total_hit + hit, total + n
    print(f"{path:44s} {n:6d} {hit:6d} {100 * hit / n:5.1f}%")
print(f"{'all':44s} {total:6d} {total_hit:6d} {100 * total_hit / max(total, 1):5.1f}%")
PY
