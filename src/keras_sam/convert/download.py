"""Cached, resumable, checksum-verified downloads (standard library only).

`download` keeps files in a cache directory and never hands out a file
whose sha256 has not been checked: data stream into `<name>.part`, which is
renamed to `<name>` only after the whole file's hash matches.
"""

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

_CHUNK = 1 << 20
_PROGRESS_INTERVAL_S = 0.1
# A full digest, or a prefix of at least 6 digits (the official SAM file
# names carry the first 6 digits of their sha256, as torch hub does).
_SHA256_RE = re.compile(r"[0-9a-f]{6,64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def default_cache_dir() -> Path:
    """The cache directory used when `download` gets no `cache_dir`.

    `$KERAS_SAM_CACHE` if set, else `$XDG_CACHE_HOME/keras-sam`, else
    `~/.cache/keras-sam`.
    """
    explicit = os.environ.get("KERAS_SAM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "keras-sam"
    return Path.home() / ".cache" / "keras-sam"


def sha256_file(path: str | os.PathLike) -> str:
    """The lowercase hex sha256 digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    sha256: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    filename: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download `url` into the cache, verify its sha256, return its path.

    If `<cache_dir>/<filename>` already exists with the expected hash, it is
    returned without any network access. Otherwise the file is streamed
    into `<filename>.part`; an existing `.part` (an interrupted download) is
    resumed with an HTTP `Range` request when the server answers 206, and
    restarted when it answers 200. Only when the complete file's sha256
    equals `sha256` is the `.part` renamed to `<filename>` (`os.replace`,
    atomic); on a mismatch it is deleted. A resumed download that fails the
    check is retried once from the start, in case the old `.part` was bad.

    Args:
        url: An `http://` or `https://` URL.
        sha256: Expected hex digest of the file: 64 hex digits, or a
            prefix of at least 6 (the official SAM checkpoints publish only
            the 6-digit prefix in their file names; a prefix detects
            corruption and truncation, not a deliberate substitution).
        cache_dir: Directory of the cache; default `default_cache_dir()`.
        filename: Name in the cache; default the last segment of the URL
            path.
        progress: Whether to draw a progress bar on stderr.
        timeout: Seconds to wait for the connection and for each read.

    Returns:
        The path of the verified file.

    Raises:
        ValueError: bad arguments; the downloaded file's sha256 differs
            (expected and actual digests are named).
        OSError: the server answered with an HTTP error status.
        ConnectionError: the server could not be reached, or the transfer
            broke off or timed out (the `.part` is kept for resuming).
    """
    expected = str(sha256).strip().lower()
    if not _SHA256_RE.fullmatch(expected):
        raise ValueError(
            "`sha256` must be 6 to 64 hexadecimal digits. Received: "
            f"sha256={sha256}"
        )
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(
            f"`url` must be an http:// or https:// URL. Received: url={url}"
        )
    if filename is None:
        path_part = urllib.parse.urlsplit(url).path
        filename = urllib.parse.unquote(path_part.rsplit("/", 1)[-1])
    if (
        not filename
        or filename in (".", "..")
        or "/" in filename
        or "\\" in filename
        or "\0" in filename
    ):
        raise ValueError(
            "`filename` must be a plain file name (give one when the URL "
            f"path has none). Received: filename={filename!r}, url={url}"
        )
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / filename
    part = directory / (filename + ".part")

    if final.is_file() and sha256_file(final).startswith(expected):
        return final

    for attempt in range(2):
        resumed, actual = _fetch(url, part, timeout=timeout, progress=progress)
        if actual.startswith(expected):
            with open(part, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(part, final)
            return final
        part.unlink(missing_ok=True)
        if not resumed or attempt == 1:
            break
    raise ValueError(
        f"sha256 mismatch for {url}: expected {expected}, got {actual}. "
        "The download was deleted."
    )


def _fetch(url: str, part: Path, *, timeout: float, progress: bool):
    """Stream `url` into `part`, resuming it if possible.

    Returns:
        `(resumed, hexdigest)`: whether an existing `.part` was continued,
        and the sha256 of the whole `.part` afterwards.
    """
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "keras-sam", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # The .part is not a prefix the server can continue: restart.
            part.unlink()
            return _fetch(url, part, timeout=timeout, progress=progress)
        raise OSError(
            f"Download of {url} failed: HTTP {e.code} {e.reason}"
        ) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"Could not download {url}: {reason}") from e

    with response:
        status = response.status
        resumed = False
        if offset and status == 206:
            match = _CONTENT_RANGE_RE.fullmatch(
                (response.headers.get("Content-Range") or "").strip()
            )
            if match is None or int(match.group(1)) != offset:
                raise ConnectionError(
                    f"Could not resume {url}: the server sent the range "
                    f"{response.headers.get('Content-Range')!r}, not "
                    f"bytes {offset}-"
                )
            resumed = True
        elif status != 200:
            raise OSError(
                f"Download of {url} failed: unexpected HTTP status {status}"
            )
        digest = hashlib.sha256()
        if resumed:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        else:
            offset = 0
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        total = offset + length if length is not None else None
        bar = _ProgressBar(total, offset) if progress else None
        received = 0
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(offset + received)
        except (http.client.HTTPException, OSError) as e:
            raise ConnectionError(
                f"Download of {url} broke off after {offset + received} "
                f"bytes ({type(e).__name__}: {e}); calling again resumes it"
            ) from e
        finally:
            if bar is not None:
                bar.close(offset + received)
        if length is not None and received != length:
            raise ConnectionError(
                f"Download of {url} broke off after {offset + received} of "
                f"{total} bytes; calling again resumes it"
            )
    return resumed, digest.hexdigest()


def _format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


class _ProgressBar:
    """A one-line text bar on stderr, redrawn at most 10 times a second."""

    width = 30

    def __init__(self, total: int | None, start: int):
        self.total = total
        self.last = 0.0
        self.drawn = False
        self.update(start, force=True)

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < _PROGRESS_INTERVAL_S:
            return
        self.last = now
        if self.total:
            fraction = min(done / self.total, 1.0)
            filled = int(self.width * fraction)
            line = (
                f"[{'#' * filled}{'.' * (self.width - filled)}] "
                f"{_format_bytes(done)} / {_format_bytes(self.total)} "
                f"{fraction:4.0%}"
            )
        else:
            line = f"{_format_bytes(done)} downloaded"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
        self.drawn = True

    def close(self, done: int) -> None:
        self.update(done, force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()
