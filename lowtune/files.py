"""Writing files without clobbering or tearing: unique temporaries beside the target, fsync, link.

`place(tmp, out)` hard-links the finished temporary to `out` and so fails, instead of replacing, when a
file appeared at `out` since the export checked it (a rename would silently replace it). On a file
system without hard links it falls back to an exclusive create and copy. `place_directory` does the
same for a finished directory (a rename onto an empty directory would silently replace it too).
`replace_atomic(path, text)` is for the files lowtune itself owns and rewrites (a run's summary.json,
metrics.jsonl): readers and crashes see the old text or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lowtune.errors import LowtuneError


@contextlib.contextmanager
def temporary_beside(target: Path, suffix: str) -> Iterator[Path]:
    """A unique, not yet existing path in `target`'s directory, removed on exit whatever happens."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _default_mode(path: Path) -> None:
    """mkstemp creates files 0600; give them the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _fsync_directory(path: Path) -> None:
    """Make the entries just made in directory `path` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _appeared(out: Path, doing: str) -> LowtuneError:
    return LowtuneError(f"{out} appeared while {doing}; it was left as it is and nothing was written")


def place(tmp: Path, out: Path, doing: str = "exporting") -> None:
    """Move the finished `tmp` to `out`, durably, refusing to replace anything now at `out`."""
    _fsync(tmp)
    _default_mode(tmp)
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise _appeared(out, doing) from None
    except OSError:  # no hard links here (some network and FAT file systems)
        try:
            with open(out, "xb") as dst, open(tmp, "rb") as src:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
        except FileExistsError:
            raise _appeared(out, doing) from None
    tmp.unlink(missing_ok=True)
    _fsync_directory(out.parent)  # make the new directory entry durable too


def write_new_text(path: Path, text: str, doing: str = "exporting") -> None:
    """Write `text` to `path` via a temporary beside it; refuses if `path` exists."""
    with temporary_beside(path, path.suffix) as tmp:
        tmp.write_text(text)
        place(tmp, path, doing)


def replace_atomic(path: Path, text: str) -> None:
    """Write `text` over `path`, a file lowtune owns and rewrites: a unique temporary beside it, fsync, rename."""
    with temporary_beside(path, path.suffix) as tmp:
        tmp.write_text(text)
        _fsync(tmp)
        _default_mode(tmp)
        os.replace(tmp, path)
    _fsync_directory(path.parent)


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """rename(2) that fails with FileExistsError when anything is at `dst`: Linux renameat2(RENAME_NOREPLACE).

    False when this platform or file system lacks it (nothing was done then)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _fsync_tree(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            _fsync(Path(directory, name))
        _fsync_directory(Path(directory))


def place_directory(staged: Path, out: Path, doing: str) -> None:
    """Move the finished directory `staged` to `out` (same file system), durably, refusing to replace
    anything now at `out`, an empty directory included.

    Linux: one renameat2(RENAME_NOREPLACE). Elsewhere: an exclusive mkdir of `out`, then a rename onto
    that empty directory, which fails rather than replace it if anything was put into it meanwhile.
    """
    _fsync_tree(staged)
    try:
        if not _rename_noreplace(staged, out):
            os.mkdir(out)
            try:
                os.rename(staged, out)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.rmdir(out)  # ours, if still empty
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(e.errno, e.strerror) from None
                raise
    except FileExistsError:
        raise _appeared(out, doing) from None
    _fsync_directory(out.parent)


def probe(check) -> bool:
    """A filesystem check (e.g. `path.is_dir`) that treats an unusable path (too long, bad bytes) as absent."""
    try:
        return check()
    except (OSError, ValueError):
        return False


def did_you_mean_path(path: Path) -> str:
    """' — did you mean runs/sft?' when a sibling of a missing path has a close name, else ''."""
    import difflib

    parent = path.parent
    if str(parent) in ("", ".") or not probe(parent.is_dir):
        return ""
    try:
        siblings = [p.name for p in parent.iterdir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f" — did you mean {parent / close[0]}?" if close else ""
