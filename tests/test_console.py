"""util/console.py and util/tensorflow_start.py: oneDNN's kernels on, a command's first line is
its own, TensorFlow's start-up lines are dropped, anything else written to stderr during the
import comes through."""
import os
import subprocess
import sys
from pathlib import Path

from util.console import filtered_stderr
from util.tensorflow_start import onednn_kernels

ROOT = Path(__file__).resolve().parents[1]


def test_tensorflow_starts_with_onednn_and_without_a_line_on_the_console():
    """A command's TensorFlow (util/tensorflow_start.py) runs oneDNN's kernels whatever the x86 CPU
    (TensorFlow's own default is Eigen's below AVX512_VNNI), and its start-up lines are dropped."""
    script = ("import sys\nfrom util.tensorflow_start import prepare_tensorflow\n"
              "prepare_tensorflow()\nprint('first', file=sys.stderr)\nimport keras\n"
              "keras.ops.ones(2)\nfrom tensorflow.python.util import _pywrap_util_port\n"
              "print(_pywrap_util_port.IsMklEnabled())\nprint('second', file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "KERAS_BACKEND": "tensorflow"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n" and done.stderr == "first\nsecond\n"
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                           text=True, env={**env, "TF_ENABLE_ONEDNN_OPTS": "1"}, timeout=300)
    assert "oneDNN custom operations" in plain.stderr  # what is dropped: TensorFlow's own lines


def test_a_user_setting_of_onednn_is_kept(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    onednn_kernels()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    onednn_kernels()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_only_absl_info_and_warning_lines_are_dropped(capfd):
    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called ...\n")
        os.write(2, b"I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"W1201 10:00:00.0  1 something.cc:1] a warning\n")
        os.write(2, b"E0000 00:00:1.0  1 dso_loader.cc:1] a real error\n")
        print("a Python line", file=sys.stderr)
    kept = capfd.readouterr().err.splitlines()  # (under pytest, Python's stderr bypasses fd 2)
    assert sorted(kept) == ["E0000 00:00:1.0  1 dso_loader.cc:1] a real error", "a Python line"]
