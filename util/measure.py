"""A tool run in its own process, measured: status, wall seconds and peak resident memory.

    result = measured("train", ["--config", ...], log)   # {"status", "seconds", "peak_bytes"}

compare.py runs every system's training and prediction this way, so that a row's peak memory is
its own system's: `tool` is a module with main(argv) (train, predict, lr_range, peers.nnunet ...),
imported in the child from the project's root.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def child() -> int:
    """In a subprocess: `tool record argv...`: run tool.main(argv), then write to `record` its
    status, wall seconds and the process's peak resident memory (bytes)."""
    import importlib

    tool, record, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    module = importlib.import_module(tool)
    start = time.perf_counter()
    try:
        status = module.main(argv)
    except SystemExit as stop:  # a tool's one-line error
        status = stop.code if isinstance(stop.code, int) else 1
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"status": status, "seconds": seconds,
                                  "peak_bytes": peak_resident_bytes()}))
    return status


def peak_resident_bytes() -> int:
    """This process's own peak resident memory: VmHWM of /proc/self/status. Not ru_maxrss, which
    Linux carries over from the parent in a child started by vfork (as subprocess starts them):
    a child of a 2 GB parent reported 2 GB there and 14 MB here."""
    try:
        with open("/proc/self/status") as status:
            kilobytes = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
        return int(kilobytes) * 1024
    except (OSError, StopIteration):  # no /proc (not Linux): the rusage figure, kilobytes
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured(tool: str, argv: list, log: Path) -> dict:
    """Run tool.main(argv) in its own process (output to `log`); its status, seconds, peak bytes."""
    record = log.with_suffix(".measure.json")
    record.unlink(missing_ok=True)
    code = "import sys; from util.measure import child; sys.exit(child())"
    with open(log, "w") as handle:
        process = subprocess.run([sys.executable, "-c", code, tool, str(record), *argv],
                                 cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if not record.is_file():
        return {"status": process.returncode or 1, "seconds": float("nan"), "peak_bytes": 0}
    return json.loads(record.read_text())

