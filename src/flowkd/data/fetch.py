"""Datasets by name: download the official archive, verify its published checksum, extract it safely.

``fetch("cifar10", "data")`` leaves ``data/cifar-10-batches-py`` (the folder :func:`flowkd.data.readers.read_cifar`
reads) and nothing else: the archive is downloaded to ``<root>/<file>.part`` (an interrupted download resumes
from there with an HTTP Range request; a server that ignores Range sends the whole file again), checked
against its MD5, extracted into a temporary folder beside the target and renamed into place at the end, so the
dataset folder is either complete or absent. Every address, file name, checksum and target folder lives in
:data:`ARCHIVES`; ``FLOWKD_DATA_MIRROR`` (or ``mirror=``) replaces the address's base with a mirror holding
the same files. Only the standard library talks HTTP.

(Over 300 lines on purpose: download, checksum and safe extraction guard one promise together, a complete
dataset or nothing, and read best in one place.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from ..errors import FlowKDError

__all__ = ["Archive", "ARCHIVES", "fetch", "present", "ensure", "archive_url", "MIRROR_ENV"]


@dataclass(frozen=True)
class Archive:
    url: str                      # the published address
    filename: str                 # the archive's file name (also where a hand-downloaded copy is looked for)
    md5: str                      # the published checksum of the archive
    folder: str                   # the folder the archive unpacks to, which flowkd's reader expects under root
    files: tuple[str, ...]        # what the reader needs inside that folder


#: The one table of datasets flowkd can fetch: name -> official archive.
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
        ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
         "test_batch")),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("meta", "train", "test")),
    "stl10": Archive(
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb", "stl10_binary",
        ("class_names.txt", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")),
}

#: Environment variable: a base address that replaces each archive's own (``$FLOWKD_DATA_MIRROR/<filename>``).
MIRROR_ENV = "FLOWKD_DATA_MIRROR"
_CHUNK = 1 << 20


def _entry(name: str) -> Archive:
    if name not in ARCHIVES:
        raise FlowKDError(f"no download known for dataset {name!r}; fetchable: {', '.join(ARCHIVES)}")
    return ARCHIVES[name]


def archive_url(name: str, mirror: str | None = None) -> str:
    """The address ``name``'s archive is downloaded from: the table's, or ``<mirror>/<filename>``."""
    a = _entry(name)
    mirror = os.environ.get(MIRROR_ENV, "") if mirror is None else mirror
    return f"{mirror.rstrip('/')}/{a.filename}" if mirror else a.url


def present(name: str, root) -> bool:
    """Whether every file the reader needs is under ``root`` or ``root/<folder>`` (where the readers look)."""
    a = _entry(name)
    root = Path(root)
    return any(all((d / f).is_file() for f in a.files) for d in (root / a.folder, root))


# ------------------------------------------------------------------------------------------- download


class _Progress:
    """Bytes and rate: tqdm when installed, else a plain line on stderr about once a second."""

    def __init__(self, desc: str, total: int | None, initial: int, enabled: bool):
        self.desc, self.total, self.done, self.enabled = desc, total, initial, enabled
        self.bar = None
        self._t0, self._start, self._last = time.monotonic(), initial, 0.0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= 1.0:
            self._last = time.monotonic()
            self._plain()

    def _plain(self, end: str = "\r") -> None:
        rate = (self.done - self._start) / max(time.monotonic() - self._t0, 1e-9)
        tot = f" / {self.total / 2**20:.1f} MiB ({100 * self.done / self.total:.0f} %)" if self.total else " MiB"
        print(f"{self.desc}: {self.done / 2**20:.1f}{tot}  {rate / 2**20:.2f} MiB/s", end=end, file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._plain("\n")


def _by_hand(url: str, dest: Path) -> str:
    return f"download it by hand from {url} and place it at {dest}, then rerun"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class _Short(Exception):
    """The connection ended (or broke) before the whole file came; progress was made if ``grew``."""

    def __init__(self, why: str, grew: bool):
        super().__init__(why)
        self.grew = grew


def _one_attempt(url: str, part: Path, timeout: float, progress: bool, desc: str, log) -> None:
    """Download ``url`` into ``part``, continuing from its current size with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "flowkd", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part may already be the whole file
            e.close()
            return
        raise
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {have}-"):
                raise _Short(f"the server answered Range bytes={have}- with Content-Range {crange!r}", False)
            mode, total = "ab", (have + length if length is not None else None)
        else:
            if have:
                log(f"{desc}: the server ignored the resume request (HTTP {status}); downloading from the start")
            mode, have, total = "wb", 0, length
        bar = _Progress(desc, total, have, progress)
        got = 0
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read1(_CHUNK)  # what has arrived: a stall keeps the bytes so far
                    except (socket.timeout, TimeoutError) as e:
                        raise _Short(f"timed out after {timeout:g} s without data", got > 0) from e
                    except (ConnectionError, urllib.error.URLError, OSError) as e:
                        raise _Short(f"connection broke: {e}", got > 0) from e
                    except Exception as e:  # http.client.IncompleteRead and friends
                        raise _Short(f"transfer broke: {type(e).__name__}", got > 0) from e
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if length is not None and got < length:
            raise _Short(f"the connection closed after {got} of {length} bytes", got > 0)


def _download(url: str, part: Path, timeout: float, retries: int, progress: bool, desc: str, log) -> None:
    """Fill ``part`` with the whole file, resuming after broken transfers while they make progress."""
    tries = 0
    while True:
        try:
            _one_attempt(url, part, timeout, progress, desc, log)
            return
        except _Short as e:
            tries += 1
            if not e.grew or tries > retries:
                raise
            log(f"{desc}: {e}; resuming ({tries}/{retries})")


def _fail_download(e: BaseException, url: str, part: Path, dest: Path) -> FlowKDError:
    kept = part.stat().st_size if part.exists() else 0
    if part.exists() and not kept:
        part.unlink()
    resume = f" ({kept} bytes kept in {part}: rerun to resume, or " if kept else " ("
    if isinstance(e, urllib.error.HTTPError):
        why = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, urllib.error.URLError):
        why = f"cannot reach the server ({e.reason})"
    elif isinstance(e, (socket.timeout, TimeoutError)):
        why = "timed out waiting for the server"
    else:
        why = str(e) or type(e).__name__
    return FlowKDError(f"download of {url} failed: {why}{resume}{_by_hand(url, dest)})")


# -------------------------------------------------------------------------------------------- extract


def _member_path(m: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = m.name
    bad = None
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        bad = "an absolute path"
    elif ".." in PurePosixPath(name).parts:
        bad = "a '..' component"
    elif m.issym() or m.islnk():
        bad = f"a {'symbolic' if m.issym() else 'hard'} link (to {m.linkname!r})"
    elif not (m.isfile() or m.isdir()):
        bad = "a device, pipe or other special file"
    if bad:
        raise FlowKDError(f"archive {archive} is refused: member {name!r} is {bad}; nothing was extracted")
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _extract(archive: Path, into: Path, a: Archive) -> None:
    """Check every member first (regular files and folders under ``a.folder`` only), then write them."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            paths = [_member_path(m, archive) for m in members]
            for m, p in zip(members, paths):
                if p.parts and p.parts[0] != a.folder:
                    raise FlowKDError(f"archive {archive} is refused: member {m.name!r} lies outside "
                                      f"{a.folder}/, the folder the reader expects; nothing was extracted")
            for m, p in zip(members, paths):
                target = into.joinpath(*p.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FlowKDError(f"cannot extract {archive}: {type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------------------------------ API


@contextlib.contextmanager
def _lock(root: Path, name: str):
    """One fetch of a dataset per root at a time (several ranks of a torchrun job may ask together)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = root / f".{name}.fetch.lock"
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                path.unlink()


def fetch(name: str, root, *, mirror: str | None = None, timeout: float = 60.0, retries: int = 5,
          progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Download, verify and extract dataset ``name`` (a key of :data:`ARCHIVES`) under ``root``.

    Returns the dataset folder ``root/<folder>``. Already there: nothing is downloaded. The archive file
    ``root/<filename>`` placed there by hand is used (and kept) instead of downloading; a downloaded one is
    deleted after extraction. Raises :class:`FlowKDError` (one line: the address and what to do) on an HTTP
    error, a timeout (``timeout`` seconds without data), a checksum mismatch or an unsafe archive, and then
    leaves no dataset folder behind (a partial download stays in ``<filename>.part`` to be resumed).
    """
    a = _entry(name)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    url = archive_url(name, mirror)
    root = Path(root)
    target = root / a.folder
    if present(name, root):
        return target if all((target / f).is_file() for f in a.files) else root
    from ..io import check_folder

    check_folder(root, "--root")
    if timeout is not None:
        from ..checks import check_number

        check_number("--timeout", timeout, "> 0")
    if target.exists():
        missing = next(f for f in a.files if not (target / f).is_file())
        raise FlowKDError(f"{target} exists but is incomplete (no {missing}); remove it and rerun")
    made = []
    for d in reversed([root, *root.parents]):
        if not d.exists():
            made.append(d)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _lock(root, name):
            if present(name, root):  # another process finished it while this one waited
                return target
            _fetch_locked(name, a, url, root, target, timeout, retries, progress, log)
    except BaseException:
        for d in reversed(made):  # leave no empty folders this call created
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return target


def _fetch_locked(name, a: Archive, url, root: Path, target: Path, timeout, retries, progress, log) -> None:
    dest = root / a.filename
    by_hand = dest.is_file()
    if by_hand:
        log(f"{name}: using {dest}")
        archive = dest
    else:
        archive = root / f"{a.filename}.part"
        log(f"{name}: downloading {url}")
        try:
            _download(url, archive, timeout, retries, progress, name, log)
        except FlowKDError:
            raise
        except (OSError, urllib.error.URLError, _Short, ValueError) as e:
            raise _fail_download(e, url, archive, dest) from None
        except KeyboardInterrupt:
            if archive.exists() and not archive.stat().st_size:
                archive.unlink()
            raise
    got = _md5(archive)
    if got != a.md5:
        if by_hand:
            raise FlowKDError(f"{dest} has MD5 {got}, not the published {a.md5}: it is not the archive from "
                              f"{url}; remove it and rerun, or {_by_hand(url, dest)}")
        size = archive.stat().st_size
        archive.unlink()
        raise FlowKDError(f"download of {url} is corrupt: MD5 {got} of {size} bytes, expected {a.md5} (the file "
                          f"was deleted); rerun to download it again, or {_by_hand(url, dest)}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{a.folder}.", suffix=".tmp", dir=root))
    try:
        log(f"{name}: extracting {a.filename}")
        _extract(archive, tmp, a)
        missing = [f for f in a.files if not (tmp / a.folder / f).is_file()]
        if missing:
            raise FlowKDError(f"archive from {url} has no {a.folder}/{missing[0]}: it is not the expected release; "
                              f"{_by_hand(url, dest)}")
        os.rename(tmp / a.folder, target)
    except FlowKDError:
        if not by_hand:  # an archive that cannot be used is not kept either
            archive.unlink()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not by_hand:
        archive.unlink()
    log(f"{name}: ready in {target}")


def ensure(name: str, root, **kwargs) -> None:
    """Fetch ``name`` under ``root`` unless the reader's files are already there (``data.download = true``)."""
    if not present(name, root):
        fetch(name, root, **kwargs)
