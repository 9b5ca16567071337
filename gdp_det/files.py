"""Writing files so that an interruption never leaves a part of one behind."""
import contextlib
import os
import os.path as osp
import shutil
import tempfile
from typing import Sequence


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and
    ``os.replace``: readers see the old file or the new one, never a part."""
    d = osp.dirname(osp.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', dir=d)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def staging_dir(out_dir: str):
    """A temporary directory inside ``out_dir`` (created if needed; on the same file
    system, so :func:`publish` renames), removed on exit with whatever it still holds."""
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.tmp_', dir=out_dir)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: str, out_dir: str, names: Sequence[str]) -> None:
    """Move the files ``names`` from ``staged`` into ``out_dir`` in order, each with
    ``os.replace`` (atomic per file). The last one marks the set complete: an older copy
    of it is removed first, so an interruption in between never leaves a marker beside
    the files of another set."""
    marker = osp.join(out_dir, names[-1])
    if osp.exists(marker):
        os.remove(marker)
    for name in names:
        os.replace(osp.join(staged, name), osp.join(out_dir, name))
