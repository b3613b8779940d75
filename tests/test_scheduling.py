"""The suite's own scheduling (conftest.py): each test file (or SHARED_WORKER group) runs whole on
one xdist worker, so a module fixture is built once and two full-size files never run at once.
Checked on a throwaway suite of three files run by pytest -n 2 with the suite's hooks. And the
suite's processes allocate numpy arrays without huge pages (conftest.py, NUMPY_MADVISE_HUGEPAGE)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILE = '''
import os

import pytest


@pytest.mark.parametrize("k", range(6))
def test_record_the_worker(k):
    with open(os.environ["WORKERS_LOG"], "a") as log:
        log.write(f"{__name__} {os.environ['PYTEST_XDIST_WORKER']}\\n")
'''


def test_every_file_runs_on_one_worker(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.conftest import (pytest_collection_modifyitems,  # noqa: F401\n"
        "                            pytest_xdist_make_scheduler)\n")
    for name in ("test_first.py", "test_second.py", "test_third.py"):
        (suite / name).write_text(TEST_FILE)
    log = tmp_path / "workers.log"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                           "--no-loadscope-reorder", "-p", "no:cacheprovider", str(suite)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"WORKERS_LOG": str(log), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen: dict = {}
    for line in log.read_text().splitlines():
        module, worker = line.split()
        seen.setdefault(module, set()).add(worker)
    assert sorted(seen) == ["test_first", "test_second", "test_third"]
    assert all(len(workers) == 1 for workers in seen.values()), seen  # no file split
    assert len(set().union(*seen.values())) == 2  # and both workers used


def test_numpy_takes_no_huge_pages_here_or_in_a_child_process():
    """On the CI VMs a huge page first costs a compaction stall (docs/test-durations.md)."""
    import numpy._core.multiarray as numpy_arrays

    assert numpy_arrays._get_madvise_hugepage() is False
    child = subprocess.run([sys.executable, "-c", "import numpy._core.multiarray as m; "
                            "print(m._get_madvise_hugepage())"], capture_output=True, text=True,
                           timeout=60)
    assert child.stdout.strip() == "False", child.stderr[-2000:]
