"""Download a file safely: mirrors, resume, checksum, atomic rename.

`download(urls, dest)` fetches the first mirror that works into `dest.part`, resuming a partial
`.part` left by an earlier run with an HTTP Range request. Only a complete file whose checksum
(and optional content check) passes is renamed to `dest`, after an fsync, with `os.replace`, so a
file at `dest` is always whole: an interrupted run never leaves a truncated file under the real name.
Plain `urllib`, no third-party HTTP client.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .errors import DeersError

CHUNK_BYTES = 1 << 20
USER_AGENT = "deers-downloader/0.1"  # some mirrors refuse urllib's default agent


class DownloadError(DeersError, OSError):
    """No mirror gave a complete, verified file. The message lists every URL tried and why it failed.

    `reasons` holds the same as one line per URL, `"URL: why"` (e.g. for a one-line log message).
    """

    reasons: list[str] = []


class ChecksumError(DownloadError):
    """A downloaded file's hash differs from the expected one (the partial file has been deleted)."""


class _Incomplete(Exception):
    """The connection ended before the whole body arrived; the bytes so far are kept for a resume."""


def cache_dir(name: str) -> Path:
    """Where datasets are cached: `$DEERS_DATA_DIR/<name>`, else `~/.cache/deers/<name>`."""
    base = os.environ.get("DEERS_DATA_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "deers") / name


def file_hash(path: Path, algorithm: str) -> str:
    """Hex digest ("sha256" or "md5") of a file, read in chunks so big files fit in memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(urls: "list[str] | str", dest: "str | Path", sha256: str | None = None, md5: str | None = None,
             desc: str | None = None, timeout: float = 30, retries: int = 3,
             check: "Callable[[Path], None] | None" = None) -> Path:
    """Fetch `dest` from the first mirror in `urls` that gives a complete, verified file.

    An existing `dest` is returned as is (only verified files are ever renamed there). Each mirror
    gets `retries` attempts; an attempt cut off midway resumes from the bytes already in
    `dest.part`. `sha256`/`md5` are of the file exactly as downloaded. `check(part_path)` may raise
    ValueError to reject the content (e.g. "not a text file") before it is accepted. Raises `ChecksumError`
    when the hash is wrong and `DownloadError` when every mirror failed (e.g. offline).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dest = Path(dest)
    if dest.exists():
        return dest
    if not urls:
        raise DownloadError(f"no URL given to download {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    failures: list[str] = []
    checksum_failed = False
    for url in urls:
        try:
            _fetch_with_retries(url, part, desc or dest.name, timeout, retries)
            _verify(part, dest, sha256, md5)
            if check is not None:
                check(part)
        except ChecksumError as err:
            checksum_failed = True
            failures.append(f"{url}: {err}")
            part.unlink(missing_ok=True)
            continue
        except (OSError, ValueError, http.client.HTTPException, _Incomplete) as err:
            failures.append(f"{url}: {_reason(err)}")
            if isinstance(err, ValueError):  # the content check rejected it: do not resume from it
                part.unlink(missing_ok=True)
            continue
        _commit(part, dest)
        return dest
    listing = "\n".join(f"  {failure}" for failure in failures)
    error = (ChecksumError if checksum_failed else DownloadError)(
        f"could not download {dest.name} to {dest}; tried {len(urls)} URL(s):\n{listing}")
    error.reasons = failures
    raise error


def _reason(err: BaseException) -> str:
    """A one-line reason for a failed attempt (URLError hides the socket error in `.reason`)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{type(err.reason).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"


def _fetch_with_retries(url: str, part: Path, desc: str, timeout: float, retries: int) -> None:
    """Up to `retries` attempts; a connection that drops midway is resumed, an HTTP error is final."""
    for attempt in range(max(1, retries)):
        try:
            _fetch(url, part, desc, timeout)
            return
        except urllib.error.HTTPError:
            raise
        except (_Incomplete, http.client.IncompleteRead, ConnectionError, TimeoutError):
            if attempt == max(1, retries) - 1:
                raise


def _fetch(url: str, part: Path, desc: str, timeout: float) -> None:
    """One attempt: append to `part` from where it stops, or restart when the server ignores Range."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        if err.headers.get("Content-Range", "") == f"bytes */{have}":  # the partial is already whole
            return None
        part.unlink()  # asked past the end of a shorter file: the partial is not usable, start over
        return _fetch(url, part, desc, timeout)
    with response:
        if have and response.status != 206:  # the server ignored Range and sends the whole file
            have = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = have + expected if expected is not None else None
        received = 0
        with open(part, "ab" if have else "wb") as f, progress_bar(total, desc, initial=have) as bar:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received < expected:
        raise _Incomplete(f"connection closed after {have + received} of {total} bytes")


def _verify(part: Path, dest: Path, sha256: str | None, md5: str | None) -> None:
    """Compare the finished file's hash with the expected one; ChecksumError names both."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = file_hash(part, algorithm)
        if actual != expected.lower():
            raise ChecksumError(f"{algorithm} mismatch for {dest.name}: expected {expected.lower()}, got {actual}")


def _commit(part: Path, dest: Path) -> None:
    """fsync the finished file, then rename it into place atomically (and fsync the folder)."""
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    try:
        folder = os.open(dest.parent, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename itself is still atomic
        return
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed (it is an optional dependency)."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def progress_bar(total: int | None, desc: str, initial: int = 0):
    """A byte-counting tqdm bar on stderr, shown only when stderr is a terminal (logs stay clean)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not sys.stderr.isatty(), leave=False)
