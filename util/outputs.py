"""Outputs that fail cleanly: check a location before the long work, write files atomically, and
end a tool with one line `error: <path>: <reason>` instead of a traceback.

    @exits_cleanly(ConfigError)             # these errors and every OSError: one line, exit 2
    def main(argv=None):
        check_folder(args.out)              # a wrong --out fails now, not after hours of work
        with atomic(args.out / "x.npy") as temporary:
            np.save(temporary, x)           # x.npy appears only when complete
        write_json(args.out / "record.json", record)   # the same, for a JSON record

A disk that fills up midway (ENOSPC, quota, I/O error) thus leaves the files already written
intact and nothing half-written under a final name; a rerun continues from there.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


class OutputError(Exception):
    """An output that cannot be written; str() is one line `<path>: cannot write: <reason>`."""


def reason(path: Path, error: OSError) -> str:
    """Why writing `path` failed, in words: errno's text, or which file stands where a folder must.

    Some libraries report a short write without errno (numpy: "N requested and M written"); when
    the file system of `path` is then full, that is said.
    """
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    if error.errno:
        return os.strerror(error.errno)
    text = str(error).splitlines()[0]
    return f"{os.strerror(errno.ENOSPC)} ({text})" if _full(path) else text


def _full(path: Path) -> bool:
    """Whether the file system holding `path` has no block left for files."""
    folder = next(p for p in (path, *path.parents) if p.exists())
    return os.statvfs(folder).f_bavail == 0


def failure(path, error: OSError, doing: str = "cannot write") -> OutputError:
    """The OutputError naming `path` for an OSError met while writing it."""
    return OutputError(f"{path}: {doing}: {reason(Path(path), error)}")


def check_folder(folder) -> Path:
    """Create `folder` (and its parents) if needed and prove that a file can be written in it.

    Raises OutputError naming the folder (or the parent that cannot be made) and the reason: a
    file in the way, no permission, a read-only file system.
    """
    folder = Path(folder)
    _probe(folder, folder)
    return folder


def check_file(path) -> Path:
    """check_folder for the folder of `path`, and refuse a `path` that is a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write: it is a folder")
    _probe(path.parent, path)
    return path


def _probe(folder: Path, named: Path) -> None:
    """Make `folder` and an (unnamed, at once deleted) file in it; OutputError if either fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise failure(error.filename or folder, error, "cannot create folder") from None
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise failure(named, error) from None


@contextlib.contextmanager
def atomic(path):
    """Yield a temporary name beside `path` (same folder, same ending); rename it to `path` when
    the block completes. On any failure the temporary (file or folder) is removed and `path` is
    left as it was; an OSError becomes an OutputError naming `path` (so a nested block should
    hold only the writes of its own file: it is renamed first, the outer one last).
    """
    path = Path(path)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        problem = failure(path, error) if isinstance(error, OSError) else None  # while still full
        with contextlib.suppress(OSError):
            if temporary.is_dir():
                shutil.rmtree(temporary)
            else:
                temporary.unlink(missing_ok=True)
        if problem is None:
            raise
        raise problem from None


# Bytes a write() call hands the kernel (in_pieces): on the virtual machines this project is tested
# on (Linux 6.18 guests that hand freed memory back to their host), one write() of 1 MB or more to
# ext4 has the kernel take large page-cache folios from memory the host took back: 13-17 ms of system
# time a MB, against 0.3 ms in 64 KB pieces (docs/test-durations.md, seventh round).
PIECE = 64 * 1024


class _Pieces(io.RawIOBase):
    """A file opened for binary writing whose write() passes the kernel at most PIECE bytes a call;
    seekable, so zipfile (Keras's .keras) and numpy can write through it."""

    def __init__(self, path):
        super().__init__()
        self.name = str(path)  # as a file's; Keras puts a temporary beside it when memory is short
        self.file = open(path, "wb", buffering=0)

    def writable(self):
        return True

    def seekable(self):
        return True

    def write(self, data):
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += self.file.write(view[done:done + PIECE])
        return done

    def seek(self, offset, whence=os.SEEK_SET):
        return self.file.seek(offset, whence)

    def tell(self):
        return self.file.tell()

    def close(self):
        if not self.closed:
            self.file.close()
        super().close()


def in_pieces(path) -> io.RawIOBase:
    """`path` opened for binary writing in PIECE-byte write() calls (same bytes, same file)."""
    return _Pieces(path)


def write_json(path: Path, value) -> None:
    """`value` as indented JSON at `path`, atomically (temporary name, then rename)."""
    with atomic(path) as temporary:
        temporary.write_text(json.dumps(value, indent=1))


def exits_cleanly(*errors):
    """Decorate a tool's main(): OutputError, every OSError and the given one-line errors end it
    with `error: <message>` on stderr and exit status 2, never a traceback.

    Standard output counts as an output: a failed print (`> /dev/full`, a log on a full disk) is
    reported as `error: standard output: cannot write: <reason>`.
    """
    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            stdout = sys.stdout
            sys.stdout = _Stdout(stdout) if stdout is not None else None  # None: fd 1 closed
            try:
                status = main(*args, **kwargs)
                sys.stdout.flush()
                return status
            except (OutputError, OSError, *errors) as error:
                sys.stderr.write(f"error: {message(error)}\n")
                raise SystemExit(2) from None
            finally:
                sys.stdout = stdout
        return run
    return decorate


def message(error: Exception) -> str:
    """One line for an error; an OSError as `<file>: <reason>`."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {reason(Path(error.filename), error)}"
    return str(error)


class _Stdout:
    """sys.stdout while a tool runs: a write or flush that fails raises OutputError naming it."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self._do(self.stream.write, text)

    def flush(self):
        return self._do(self.stream.flush)

    def _do(self, call, *args):
        try:
            return call(*args)
        except OSError as error:
            with contextlib.suppress(OSError, ValueError):  # the exit's own flush goes nowhere
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            raise failure("standard output", error) from None

    def __getattr__(self, name):
        return getattr(self.stream, name)
