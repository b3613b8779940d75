"""The console is the project's: TensorFlow's start-up lines kept off it, in one place.

Every command calls quiet_tensorflow() (through util/tensorflow_start.py) before anything can
import TensorFlow. TensorFlow 2.21 logs through absl before absl is initialised, so
TF_CPP_MIN_LOG_LEVEL does not reach its first lines, and one `import tensorflow` prints two of
them twice (its two shared libraries each say "oneDNN custom operations are on").
quiet_tensorflow sets TF_CPP_MIN_LOG_LEVEL=2 (errors only) unless it is set, and at that level
runs the first import of TensorFlow, whenever and wherever it happens, with the process's standard
error captured: the start-up lines of info and warning level are dropped, anything else is
written back. Nothing is imported early, so a command that never needs TensorFlow never loads it.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# absl's "before InitializeLog" notice, and absl's info (I) and warning (W) lines: I1201 ... or I0000 ...
NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} )")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE):
    """Around a block: file descriptor 2 (C libraries' stderr too) into a temporary file; then its
    lines are written back to stderr, except those `noise` matches."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not noise.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `name` as Python would, and runs its import inside filtered_stderr (once)."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def quietly(module):
            with filtered_stderr():
                execute(module)

        spec.loader.exec_module = quietly
        return spec


def quiet_tensorflow() -> None:
    """TensorFlow at log level 2 unless set; at 2 or above its start-up lines are dropped."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2"
    if quiet and "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))
