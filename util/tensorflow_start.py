"""What every command sets before anything imports TensorFlow: oneDNN's CPU kernels on every x86
CPU, and TensorFlow's start-up lines kept off the console (util/console.py).

TensorFlow's x86 wheels run oneDNN's kernels by default only on CPUs with AVX512_VNNI, AVX512_BF16
or AMX (Intel Cascade Lake and newer). On any other x86 CPU (AVX2 only: AMD EPYC and Ryzen, older
Xeons and Cores) they fall back to Eigen's, whose Conv3D gradients are several times slower: the
small EEN's training step took 7.5 s with Eigen's kernels and 1.3 s with oneDNN's on a 2-core AMD
EPYC (docs/test-durations.md, tenth round). The kernels compute the same function with the same
weights; only the rounding of their sums differs. TF_ENABLE_ONEDNN_OPTS=0 keeps Eigen's.
"""
import os

from util.console import quiet_tensorflow


def onednn_kernels() -> None:
    """TF_ENABLE_ONEDNN_OPTS=1 unless set (read once, when TensorFlow first runs a kernel)."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def prepare_tensorflow() -> None:
    """oneDNN's kernels and a quiet start; imports nothing, so a command that never needs
    TensorFlow never loads it."""
    onednn_kernels()
    quiet_tensorflow()
