"""Writing files others may read while they are written: every write goes through a temporary name and a rename,
so a reader (a sweep job, a report, a kill) never sees half a file, and takes the modes a plain `open` would."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it (Linux's /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> Path:
    """Gives `path` (and everything under a folder) the modes a plain `open`/`mkdir` would: files written through
    mkstemp/mkdtemp or by safetensors get 600/700 whatever the umask, so colleagues could not read a run."""
    path, mask = Path(path), umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path


def free_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """`folder/stem.png`, or `stem-2.png`, `stem-3.png`... whichever does not exist yet: nothing written is
    overwritten (a suffix of "" names a folder)."""
    path, k = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}{suffix}", k + 1
    return path


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """The one write-then-rename: `write(tmp)` fills a temporary file beside `path`, which then gets the umask's
    modes (mkstemp and safetensors make 600) and is renamed over `path`; on any error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Writes `text` to `path` through `write_atomic`, flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write_atomic(path, write)


class AtomicFolder:
    """`with AtomicFolder(path) as tmp:` fills a temporary folder beside `path`; on success it takes `path` whole
    (replacing an older one, or, with `replace=False`, under the first free name `path-2`, ...: then `.path` says
    where), on error it is removed."""

    def __init__(self, path: Path, replace: bool = True) -> None:
        self.path, self.replace = Path(path), replace

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.path.name}."
        self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=prefix, suffix=".tmp"))
        return self.tmp

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                follow_umask(self.tmp)  # mkdtemp makes 700 and safetensors writes 600: set before the rename
                self._publish()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _publish(self) -> None:
        if self.replace:
            old = self.path.with_name(f".{self.path.name}.old")
            if self.path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
            return
        while True:  # another writer may take a name between the look and the rename: then the next one
            final = free_path(self.path.parent, self.path.name, "")
            try:
                os.rename(self.tmp, final)
            except OSError:
                if not final.exists():
                    raise
                continue
            self.path = final
            return
