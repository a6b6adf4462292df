"""Where the export writes, and how a finished version becomes visible.

Everything is written under a non-numeric staging directory beside the versions (TF Serving
ignores it) and renamed into ``REPO/NAME/VERSION`` at the end. Every OS error while writing
(a repository path under a file, a read-only filesystem, a full disk) is the user's to fix: one
line naming the path, exit 2, and nothing left behind - no staging directory, and no empty
``REPO/NAME/`` or ``REPO/`` the export itself created.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.core import layout
from builder.core.errors import InputError, OutputError, VersionError

_HINTS = {
    errno.ENOSPC: "free space or choose another --repo",
    errno.EDQUOT: "free space (disk quota) or choose another --repo",
    errno.EFBIG: "the file size limit (ulimit -f) is too small: raise it or choose another --repo",
    errno.EROFS: "the filesystem is read-only: choose a writable --repo",
    errno.EACCES: "no permission: choose a --repo you can write",
    errno.EPERM: "no permission: choose a --repo you can write",
    errno.ENOTDIR: "a parent of it is a file, not a directory: fix --repo",
    errno.EEXIST: "a file is in the way: fix --repo",
}


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def write_error(e: OSError, what: str | os.PathLike) -> OutputError:
    hint = _HINTS.get(e.errno or 0, "check the path and the disk")
    return OutputError(f"cannot write {what}: {e.strerror or e} ({hint})")


class Staging:
    """The staging directory of one export and the directories it had to create."""

    def __init__(self, repo: Path, model_dir: Path):
        self.repo, self.model_dir = repo, model_dir
        self.created: list[Path] = []
        self.dir: Path | None = None

    def open(self) -> Path:
        """Create ``REPO/NAME/.staging-export-...`` (and REPO, REPO/NAME when missing)."""
        for d in (self.repo, self.model_dir):
            if not d.exists():
                with mapped_os_errors(d):
                    d.mkdir(parents=True, exist_ok=True)
                self.created.append(d)
        with mapped_os_errors(self.model_dir):
            layout.clean_stale_staging(self.model_dir)
            self.dir = layout.new_staging_dir(self.model_dir, "export")
        return self.dir

    def cleanup(self) -> None:
        """Remove the staging directory, then every directory this export created that is empty."""
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        for d in reversed(self.created):
            try:
                d.rmdir()  # only succeeds when empty: another exporter's work is never touched
            except OSError:
                pass


@contextmanager
def mapped_os_errors(where: str | os.PathLike, repo: str | os.PathLike | None = None) -> Iterator[None]:
    """OSError while writing -> OutputError naming ``where`` (exit 2, one line). With ``repo``,
    an error on a file outside it is a source file that cannot be read (InputError)."""
    try:
        yield
    except OSError as e:
        inside = repo is None or not e.filename or _inside(e.filename, repo)
        if e.errno in _WRITE_ERRNOS:  # never a reading problem, whichever file copy() names
            raise write_error(e, e.filename if inside and e.filename else where) from None
        if not inside:
            raise InputError(f"cannot read {e.filename}: {e.strerror or e} (check --model)") from None
        raise write_error(e, e.filename or where) from None


def _inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return False
    return True


@contextmanager
def mapped_tf_write_errors(where: str | os.PathLike) -> Iterator[None]:
    """TensorFlow's file writers raise its own errors for OS failures: map those too."""
    import tensorflow as tf

    try:
        with mapped_os_errors(where):
            yield
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError, tf.errors.NotFoundError,
            tf.errors.UnknownError, tf.errors.FailedPreconditionError, tf.errors.InternalError) as e:
        line = (e.message or str(e)).splitlines()[0]
        raise OutputError(f"cannot write {where}: {line} (check the path and the free space of --repo)") from None


def promote(out: Path, model_dir: Path, name: str, version: int, *, auto: bool, overwrite: bool) -> Path:
    """Rename the finished version into place; never silently replaces an existing version."""
    for _ in range(100):
        target = model_dir / str(version)
        if target.exists():
            if auto:  # another exporter took it: take the next one
                version = layout.next_version(model_dir)
                continue
            if not overwrite:
                raise VersionError(f"version {version} of {name} appeared during the export "
                                   f"({target}): pass --overwrite or --version auto")
            return _replace(out, target, model_dir, version)
        try:
            os.rename(out, target)
        except OSError:
            if target.exists():
                continue
            raise
        return target
    raise VersionError(f"could not claim a version directory in {model_dir} after 100 tries")


def _replace(out: Path, target: Path, model_dir: Path, version: int) -> Path:
    if layout.exchange_dirs(out, target):  # one atomic swap: never a missing version
        shutil.rmtree(out, ignore_errors=True)
        return target
    old = model_dir / f"{layout.STAGING_PREFIX}old-{version}-{os.getpid()}-{os.urandom(4).hex()}"
    os.rename(target, old)
    try:
        os.rename(out, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target
