"""Verified, resumable downloads into the wsss-blocks cache (standard library only).

`download` is the one way files reach the cache, for pretrained weights
([`wsss_blocks.models.weights`][]) and for datasets alike. For each call it

1. returns at once when the destination already exists and matches the expected size and hashes;
2. tries the URLs in order (``$WSSS_BLOCKS_MIRROR/<file name>`` first when that variable is set, then the
   given primary URL and its mirrors), streaming into ``<dest>.part`` with a tqdm progress bar;
3. resumes a partial ``.part`` (from a dropped connection, or from an earlier, interrupted process) with an
   HTTP ``Range`` request; a server that ignores ``Range`` (status 200 instead of 206) is read from the start;
4. checks the size and the SHA-256 / MD5 **before** the file is moved into place (``os.replace``, atomic): a
   wrong or corrupt download never appears under the final name; it is deleted and the error names the file,
   the URL, the expected and the actual hash.

Environment variables:

* ``WSSS_BLOCKS_CACHE``: cache root (default ``~/.cache/wsss_blocks``), see `cache_dir`.
* ``WSSS_BLOCKS_OFFLINE=1``: never touch the network (only ``file://`` URLs are still read). A file that is
  not already in place raises `OfflineError`, which says where to put it.
* ``WSSS_BLOCKS_MIRROR=URL``: fetch ``URL/<file name>`` **before** the original hosts (for machines behind a
  firewall with an internal mirror). If the mirror does not have the file, the original URLs are still tried;
  every failure is listed in the final error.

Examples:
    >>> import hashlib, os, tempfile
    >>> from pathlib import Path
    >>> src = Path(tempfile.mkdtemp()) / "weights.bin"
    >>> _ = src.write_bytes(b"0123456789")
    >>> digest = hashlib.sha256(b"0123456789").hexdigest()
    >>> dest = Path(tempfile.mkdtemp()) / "weights.bin"
    >>> download(src.as_uri(), dest, sha256=digest, progress=False).read_bytes()
    b'0123456789'
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "cache_dir",
    "is_offline",
    "mirror_urls",
    "download",
    "verify_file",
    "file_digests",
    "DownloadError",
    "ChecksumError",
    "OfflineError",
    "CACHE_ENV",
    "OFFLINE_ENV",
    "MIRROR_ENV",
]

CACHE_ENV = "WSSS_BLOCKS_CACHE"
OFFLINE_ENV = "WSSS_BLOCKS_OFFLINE"
MIRROR_ENV = "WSSS_BLOCKS_MIRROR"

_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")


# ----------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------
def cache_dir(*parts: str) -> Path:
    """``$WSSS_BLOCKS_CACHE`` (default ``~/.cache/wsss_blocks``), joined with ``parts``; not created.

    Examples:
        >>> cache_dir("weights").name
        'weights'
    """
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "wsss_blocks"
    return root.joinpath(*parts)


def is_offline() -> bool:
    """True when ``WSSS_BLOCKS_OFFLINE`` is set to ``1``, ``true``, ``yes`` or ``on``."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def mirror_urls(file_name: str) -> list[str]:
    """``[$WSSS_BLOCKS_MIRROR/<file_name>]`` when the variable is set, else ``[]``."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    if not base:
        return []
    return [base.rstrip("/") + "/" + urllib.parse.quote(file_name)]


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
class ChecksumError(ValueError):
    """A file does not have the expected size or hash (the downloaded copy has been deleted)."""

    def __init__(self, message: str, *, path: Path | None = None, expected: str | None = None,
                 actual: str | None = None):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


class DownloadError(OSError):
    """No URL delivered the file; ``failures`` lists ``(url, reason)`` for each one tried."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.failures = list(failures)


class OfflineError(FileNotFoundError):
    """The file is not in place and ``WSSS_BLOCKS_OFFLINE`` forbids downloading it."""


class _Incomplete(OSError):
    """The connection closed before the announced number of bytes arrived (resumable)."""


# ----------------------------------------------------------------------------------------------------------
# hashing
# ----------------------------------------------------------------------------------------------------------
def file_digests(path: str | os.PathLike, algorithms: Sequence[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file for each of ``algorithms`` (one pass over the file)."""
    hs = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for h in hs.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hs.items()}


def _check_hex(value: str | None, name: str, lengths: tuple[int, int]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a hex string or None, got {type(value).__name__}")
    v = value.strip().lower()
    lo, hi = lengths
    if not _HEX.fullmatch(v) or not lo <= len(v) <= hi:
        want = f"{hi} hex digits" if lo == hi else f"{lo} to {hi} hex digits (a prefix is allowed)"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def verify_file(path: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
                size: int | None = None, what: str | None = None) -> dict[str, str]:
    """Check a file's size and hashes; return its digests (``{"sha256": ..., ...}``).

    Args:
        path: the file.
        sha256: the full 64-digit SHA-256 or a prefix of at least 8 digits (torch.hub file names carry one).
        md5: the full MD5.
        size: the size in bytes.
        what: how to name the file in the error (default its path).

    Raises:
        ChecksumError: the size or a hash differs; the message gives the expected and the actual value.
    """
    path = Path(path)
    sha256 = _check_hex(sha256, "sha256", (8, 64))
    md5 = _check_hex(md5, "md5", (32, 32))
    label = what or str(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != int(size):
        raise ChecksumError(f"{label} has {actual_size} bytes, expected {int(size)}", path=path,
                            expected=str(size), actual=str(actual_size))
    algos = ["sha256"] + (["md5"] if md5 else [])
    got = file_digests(path, algos)
    if sha256 is not None and not got["sha256"].startswith(sha256):
        kind = "sha256" if len(sha256) == 64 else "sha256 prefix"
        raise ChecksumError(f"{label} has sha256 {got['sha256']}, expected {kind} {sha256}", path=path,
                            expected=sha256, actual=got["sha256"])
    if md5 is not None and got["md5"] != md5:
        raise ChecksumError(f"{label} has md5 {got['md5']} (sha256 {got['sha256']}), expected md5 {md5}",
                            path=path, expected=md5, actual=got["md5"])
    return got


# ----------------------------------------------------------------------------------------------------------
# transfer
# ----------------------------------------------------------------------------------------------------------
def _user_agent() -> str:
    try:
        from . import __version__
    except ImportError:  # pragma: no cover - partial installs
        __version__ = "unknown"
    return f"wsss-blocks/{__version__} (+python-urllib)"


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _progress(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                        dynamic_ncols=True)
        except ImportError:
            pass
    return contextlib.nullcontext(None)


@dataclass
class _Attempt:
    """What one URL did: whether bytes were appended to an existing partial file (``resumed``)."""

    resumed: bool = False
    requests: list[str] = field(default_factory=list)


def _transfer(url: str, part: Path, size: int | None, *, progress: bool, desc: str, timeout: float,
              retries: int, retry_wait: float, attempt: _Attempt) -> None:
    """Fill ``part`` with the body of ``url``, resuming with Range requests after dropped connections."""
    failures = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start > size:  # a stale partial file of another, larger file
            part.unlink()
            start = 0
        if size is not None and 0 < start == size:
            return
        req = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
        if start > 0:
            req.add_header("Range", f"bytes={start}-")
        attempt.requests.append(f"GET {url}" + (f" bytes={start}-" if start else ""))
        try:
            try:
                resp = urllib.request.urlopen(req, timeout=timeout)
            except urllib.error.HTTPError as e:
                if e.code == 416 and start > 0:  # Range not satisfiable: the partial file may be complete
                    _, total = _content_range_total(e.headers.get("Content-Range") if e.headers else None)
                    if total is not None and total == start:
                        return
                    part.unlink()
                    continue
                raise
            with resp:
                status = getattr(resp, "status", None) or resp.getcode()
                length = resp.headers.get("Content-Length")
                body_len = int(length) if length is not None and length.isdigit() else None
                if start > 0 and status == 206:
                    first, total = _content_range_total(resp.headers.get("Content-Range"))
                    if first is not None and first != start:  # not the bytes asked for: start over
                        part.unlink()
                        continue
                    if total is None and body_len is not None:
                        total = start + body_len
                    mode = "ab"
                    attempt.resumed = True
                else:  # 200: the whole file (a server without Range support restarts the transfer)
                    start, mode, total = 0, "wb", body_len
                if size is not None and total is not None and total != size:
                    raise ChecksumError(f"{url} serves {total} bytes, expected {size}", expected=str(size),
                                        actual=str(total))
                received = start
                with open(part, mode) as f, _progress(total, start, desc, progress) as bar:
                    while True:
                        chunk = resp.read(_CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
                if total is not None and received < total:
                    raise _Incomplete(f"connection closed after {received} of {total} bytes")
                return
        except urllib.error.HTTPError as e:
            if e.code not in (408, 429, 500, 502, 503, 504):
                raise
            failures += 1
            if failures > retries:
                raise
        except (_Incomplete, urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError):
            failures += 1
            if failures > retries:
                raise
        time.sleep(retry_wait * (2 ** (failures - 1)) if failures > 1 else 0.0)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _short(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{type(e.reason).__name__}: {e.reason}"
    return f"{type(e).__name__}: {e}"


def download(urls: str | Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
             md5: str | None = None, size: int | None = None, progress: bool = True,
             mirror_name: str | None = None, force: bool = False, retries: int = 3, retry_wait: float = 1.0,
             timeout: float = 60.0, desc: str | None = None) -> Path:
    """Download a file into ``dest`` (verified, resumable, atomic) unless a verified copy is already there.

    Args:
        urls: the primary URL and its mirrors, tried in order (``$WSSS_BLOCKS_MIRROR`` goes first).
            ``file://`` URLs work too.
        dest: final path; the transfer goes to ``<dest>.part`` and is renamed only after verification.
        sha256: expected SHA-256, full (64 hex digits) or a prefix of at least 8 digits (the torch.hub
            convention, e.g. ``resnet50-19c8e357.pth``).
        md5: expected MD5 (32 hex digits), for sources that publish only an MD5.
        size: expected size in bytes (checked against ``Content-Length`` before the body is read).
        progress: show a tqdm bar (when tqdm is installed).
        mirror_name: file name appended to ``$WSSS_BLOCKS_MIRROR`` (default ``dest``'s name).
        force: download again even if ``dest`` exists (the old file is replaced only by a verified one).
        retries: further attempts per URL after a dropped connection or a 5xx/408/429 answer; each one
            resumes with a ``Range`` request.
        retry_wait: seconds before the second retry, doubling after it (the first retry is immediate).
        timeout: socket timeout in seconds.
        desc: progress-bar label (default the file name).

    Returns:
        ``dest`` as a `Path`.

    Raises:
        OfflineError: ``dest`` is missing and ``WSSS_BLOCKS_OFFLINE`` is set (nothing is requested; ``file://``
            URLs are still read).
        ChecksumError: the file in place, or every downloaded copy, has the wrong size or hash; the message
            gives the expected and actual values. A downloaded copy is deleted; a file that was already at
            ``dest`` is left for you to inspect (delete it to download again).
        DownloadError: no URL delivered the file (each URL's failure is listed).
        ValueError, TypeError: malformed ``sha256``/``md5``/``size``/``urls``.
    """
    if isinstance(urls, str):
        urls = [urls]
    urls = [u for u in urls if u]
    if any(not isinstance(u, str) for u in urls):
        raise TypeError(f"urls must be a string or a sequence of strings, got {urls!r}")
    sha256 = _check_hex(sha256, "sha256", (8, 64))
    md5 = _check_hex(md5, "md5", (32, 32))
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a non-negative int (bytes) or None, got {size!r}")
    dest = Path(dest).expanduser()
    name = dest.name
    if dest.is_file() and not force:
        verify_file(dest, sha256=sha256, md5=md5, size=size,
                    what=f"{dest} (already in place; delete it to download again)")
        return dest
    candidates = mirror_urls(mirror_name or name) + list(urls)
    if is_offline():
        local = [u for u in candidates if u.lower().startswith("file:")]
        if not local:
            where = f" (source: {candidates[0]})" if candidates else ""
            raise OfflineError(f"{name} is not at {dest} and {OFFLINE_ENV}=1 forbids downloading it: put the file "
                               f"there yourself{where}, or unset {OFFLINE_ENV}")
        candidates = local
    if not candidates:
        raise DownloadError(f"{name} is not at {dest} and no URL is known for it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(name + ".part")
    failures: list[tuple[str, str]] = []
    bad: list[ChecksumError] = []
    with _lock(dest.with_name(name + ".lock")):
        if dest.is_file() and not force:  # another process finished it while we waited for the lock
            verify_file(dest, sha256=sha256, md5=md5, size=size, what=str(dest))
            return dest
        for url in candidates:
            for fresh in (False, True):
                if fresh:
                    part.unlink(missing_ok=True)
                attempt = _Attempt(resumed=part.exists() and part.stat().st_size > 0)
                try:
                    _transfer(url, part, size, progress=progress, desc=desc or name, timeout=timeout,
                              retries=retries, retry_wait=retry_wait, attempt=attempt)
                    verify_file(part, sha256=sha256, md5=md5, size=size, what=f"{name} downloaded from {url}")
                except ChecksumError as e:
                    part.unlink(missing_ok=True)
                    if attempt.resumed and not fresh:  # the old partial file may have been the culprit
                        continue
                    bad.append(ChecksumError(f"{e}; the download was deleted", path=dest, expected=e.expected,
                                             actual=e.actual))
                    failures.append((url, str(e)))
                    break
                except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                    failures.append((url, _short(e)))
                    break
                os.replace(part, dest)
                return dest
    listing = "; ".join(f"{u}: {r}" for u, r in failures)
    if bad:
        first = bad[0]
        raise ChecksumError(str(first) if len(failures) == 1 else f"{first} (all URLs: {listing})",
                            path=dest, expected=first.expected, actual=first.actual)
    raise DownloadError(f"could not download {name} to {dest}: {listing}", failures)
