"""The ``--out`` directory, written atomically: all of the files or none of them."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .arguments import UsageError


class _OutputDir:
    """The ``--out`` directory: checked up front without creating anything; the files are
    written into a hidden folder next to it and moved into place only once they all exist, so
    a run that fails leaves neither a new (empty or partly written) directory nor stray files
    behind, and never removes a directory or file that was there before."""

    def __init__(self, out: str):
        self.path = Path(out)
        anchor = self.path  # the nearest existing ancestor (the directory itself if it exists)
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
        if not anchor.is_dir():
            raise UsageError(
                f"output directory {out!r} cannot be written: {str(anchor)!r} is not a directory"
            )
        try:
            fd, probe = tempfile.mkstemp(prefix=".laplacetorch-probe-", dir=anchor)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise UsageError(f"output directory {out!r} cannot be written: {err}") from err
        self.anchor = anchor

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """A staging folder to write into; on success its files land in :attr:`path`."""
        staging = Path(tempfile.mkdtemp(prefix=".laplacetorch-", dir=self.anchor))
        created: list[Path] = []
        try:
            yield staging
            if self.path.is_dir():
                for f in sorted(staging.iterdir()):
                    os.replace(f, self.path / f.name)
                staging.rmdir()
            else:
                for parent in reversed(self.path.parents):
                    if not parent.exists():
                        parent.mkdir()
                        created.append(parent)
                os.rename(staging, self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
