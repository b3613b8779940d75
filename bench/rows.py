"""What the benchmarks share: each row runs in its own process, so its peak memory is its own."""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_gb() -> float:
    """This process's peak resident memory (max RSS) in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_row(script: str, arguments: list) -> dict:
    """Run `script --worker ARGUMENTS` in a fresh process; its last stdout line, a JSON object,
    is the row. A failed row is {"error": its last line of stderr}."""
    command = [sys.executable, script, "--worker", *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])
