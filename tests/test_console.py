"""util/console.py: a command's first line is its own, TensorFlow's start-up lines are dropped,
anything else written to stderr during the import comes through."""
import os
import subprocess
import sys
from pathlib import Path

from util.console import filtered_stderr

ROOT = Path(__file__).resolve().parents[1]


def test_tensorflow_starts_without_a_line_on_the_console():
    script = ("import sys\nfrom util.console import quiet_tensorflow\nquiet_tensorflow()\n"
              "print('first', file=sys.stderr)\nimport keras\nkeras.ops.ones(2)\n"
              "print('second', file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "KERAS_BACKEND": "tensorflow"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "first\nsecond\n"
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert "oneDNN custom operations" in plain.stderr  # what is dropped: TensorFlow's own lines


def test_only_absl_info_and_warning_lines_are_dropped(capfd):
    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called ...\n")
        os.write(2, b"I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"W1201 10:00:00.0  1 something.cc:1] a warning\n")
        os.write(2, b"E0000 00:00:1.0  1 dso_loader.cc:1] a real error\n")
        print("a Python line", file=sys.stderr)
    kept = capfd.readouterr().err.splitlines()  # (under pytest, Python's stderr bypasses fd 2)
    assert sorted(kept) == ["E0000 00:00:1.0  1 dso_loader.cc:1] a real error", "a Python line"]
