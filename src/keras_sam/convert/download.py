"""Cached, locked, verified downloads (standard library only).

`download(url, sha256, ...)` returns a file of the cache folder whose
SHA-256 equals the full digest it was given. For a target `<name>` the
folder holds:

- `<name>`: the verified file, only ever put there by `os.replace`.
- `<name>.lock`: an empty file locked with `fcntl.flock` while a process
  checks or downloads `<name>`, so that concurrent processes download it
  once: the others wait, then find it verified. It is never deleted
  (deleting a lock file lets two processes hold two different locks).
- `<name>.<pid>.<random>.part`: the download in progress, created by its
  process under the lock (`O_EXCL`, mode `0o666` less the umask, which
  `tempfile.mkstemp`'s 0600 would not respect). Since only the lock holder
  writes parts, every part found under the lock is a leftover of a process
  that died or gave up: the largest is renamed to a fresh name of ours and
  resumed with an HTTP `Range` request, the others are deleted. A part is
  kept when a transfer breaks off (network error, deadline, Ctrl-C) and
  deleted when its content is wrong (digest, size or cap).
- `<name>.sha256`: `<digest> <size> <mtime_ns> <ctime_ns> <inode>` of the
  verified file. A cached file whose size, times and inode still equal the
  marker's is not hashed again (2.5 GB for ViT-H); any other cached file is
  hashed in full once, under the lock, and the marker rewritten.

Verification reads the written file back from disk after `fsync` (not the
bytes received), checks its size (when known) and its full digest, then
renames it. A transfer has a deadline for the whole of it besides the
per-read timeout, and stops at the expected size, or at `max_bytes` when the
size is unknown.

Locking needs `fcntl` (POSIX; local file systems and NFS with working
locks). Without it (Windows) there is no lock: concurrent processes may each
download the file, each still gets a verified one, and only parts older
than the deadline count as leftovers.

Every failure is a `DownloadError` (a `ValueError`) whose message is one
sentence naming the URL and, for network failures, how to pass a local
file instead.
"""

import contextlib
import hashlib
import http.client
import os
import re
import secrets
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 3600.0
DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB, for files of unknown size
_CHUNK = 1 << 20
_PROGRESS_INTERVAL_S = 0.1
_LOCK_POLL_S = 0.1
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_RESERVED_SUFFIXES = (".part", ".lock", ".sha256")
_HINT = (
    "download the file yourself and pass it with `--checkpoint PATH` or "
    "`SAM.from_checkpoint(PATH)`"
)


class DownloadError(ValueError):
    """A download that failed or whose file did not verify.

    The message is one sentence naming the URL; the command line prints it
    as one line.
    """


class _Discard(DownloadError):
    """A failure whose part file is worthless (wrong content, disk error)."""


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
    size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    filename: str | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    deadline: float = DEFAULT_DEADLINE_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Download `url` into the cache once, verify it, return its path.

    Under the lock of `<cache_dir>/<filename>.lock`: a cached file of the
    right size whose `.sha256` marker matches (or, without one, whose full
    digest does) is returned without network access. Otherwise the file is
    streamed into a part file of this process (resuming a leftover part
    when the server answers 206), read back from disk and hashed; only when
    size and digest match is it renamed to `<filename>`. A resumed download
    that fails the check is retried once from the start. Other processes
    asking for the same file meanwhile wait for the lock (at most
    `deadline` seconds) and then find the verified file. See the module
    docstring for the files in the cache.

    Args:
        url: An `http://` or `https://` URL.
        sha256: The file's full SHA-256, 64 hex digits (any case).
        size: The file's size in bytes, if known: a server announcing
            another size, or sending more, is refused before the hash.
        cache_dir: Directory of the cache; default `default_cache_dir()`.
        filename: Name in the cache; default the last segment of the URL
            path. Names ending in `.part`, `.lock` or `.sha256` are
            refused (the cache's own files use them).
        progress: Whether to draw a progress bar on stderr.
        timeout: Seconds to wait for the connection and for each read.
        deadline: Seconds for the whole transfer, retry included; a silent
            server is given up at most `timeout` seconds after it. Waiting
            for another process's download is bounded by it too.
        max_bytes: The most bytes accepted when `size` is None.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: (a `ValueError`) bad arguments; the server could not
            be reached, answered an HTTP error, broke off, or took longer
            than `deadline` (the part is kept and the next call resumes
            it); the file's size or digest differs or it is larger than
            the cap (the part is deleted); the cache cannot be written.
    """
    expected = _check_sha256(sha256)
    filename = _check_arguments(url, filename, size, timeout, deadline)
    if max_bytes is None or int(max_bytes) <= 0:
        raise ValueError(
            f"`max_bytes` must be a positive integer. Received: "
            f"max_bytes={max_bytes}"
        )
    limit = int(size) if size is not None else int(max_bytes)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    final = directory / filename
    marker = directory / (filename + ".sha256")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"Could not create the cache folder {directory} for {url} "
            f"({e.strerror}); set $KERAS_SAM_CACHE to a writable folder."
        ) from e

    lock = directory / (filename + ".lock")
    with _locked(lock, url, deadline, progress) as locked:
        if _cached(final, marker, expected, size):
            return final
        deadline_at = time.monotonic() + deadline
        part = _claim_part(directory, filename, limit, deadline, locked)
        try:
            for attempt in range(2):
                if attempt == 0 and size is not None and _size(part) == size:
                    # A complete leftover (its process died while hashing
                    # or renaming it): verify it as it is.
                    resumed = True
                else:
                    resumed = _transfer(
                        url,
                        part,
                        limit=limit,
                        size=size,
                        timeout=timeout,
                        deadline=deadline,
                        deadline_at=deadline_at,
                        progress=progress,
                    )
                # Verify what is on disk, not what was received.
                got = part.stat().st_size
                if size is not None and got != size:
                    raise _Discard(
                        f"The download of {url} has {got} bytes, expected "
                        f"{size}, so it was deleted; {_HINT}."
                    )
                actual = sha256_file(part)
                if actual == expected:
                    _publish(part, final, marker, expected)
                    return final
                if not resumed or attempt == 1:
                    break
                # The leftover may have been bad: once more from the start.
                os.truncate(part, 0)
            raise _Discard(
                f"sha256 mismatch for {url}: expected {expected}, got "
                f"{actual}; the download was deleted; {_HINT}."
            )
        except BaseException as e:
            keep = not isinstance(e, _Discard) and _size(part) > 0
            if not keep:
                part.unlink(missing_ok=True)
            raise


def _check_sha256(sha256) -> str:
    expected = str(sha256).strip().lower()
    if not _SHA256_RE.fullmatch(expected):
        raise ValueError(
            "`sha256` must be the file's full SHA-256, 64 hexadecimal "
            f"digits. Received: sha256={sha256}"
        )
    return expected


def _check_arguments(url, filename, size, timeout, deadline) -> str:
    """The other arguments' checks; returns the file name."""
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
    if filename.endswith(_RESERVED_SUFFIXES):
        raise ValueError(
            "`filename` must not end in .part, .lock or .sha256 (the "
            f"cache's own files use them). Received: filename={filename!r}"
        )
    if size is not None and (isinstance(size, bool) or int(size) <= 0):
        raise ValueError(
            f"`size` must be None or a positive integer. Received: size={size}"
        )
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if not value > 0:
            raise ValueError(
                f"`{name}` must be a positive number of seconds. "
                f"Received: {name}={value}"
            )
    return filename


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: float, on_wait=None):
    """Hold an exclusive `flock` on `path` (created if missing, never
    deleted: deleting a lock file lets two processes hold two locks).

    Yields whether a lock is held: False without `fcntl` (Windows) or on a
    file system without locks, where the block runs unlocked. Polls every
    0.1 s; `on_wait()`, if given, is called once when another process holds
    the lock.

    Raises:
        OSError: the lock file cannot be created.
        TimeoutError: another process held the lock for `wait` seconds.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock (see the module docstring)
        yield False
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        give_up = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                pass
            except OSError:  # e.g. ENOLCK: a file system without locks
                locked = False
                break
            if time.monotonic() >= give_up:
                raise TimeoutError(f"{path} held for over {wait:g} s")
            if on_wait is not None and not told:
                on_wait()
                told = True
            time.sleep(_LOCK_POLL_S)
        yield locked
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _locked(path: Path, url: str, wait: float, progress: bool):
    """Hold an exclusive `flock` on `path` (`file_lock`); yields whether a
    lock is held. Waiting is bounded by `wait` seconds."""

    def tell():
        if progress:
            sys.stderr.write(f"Waiting for another process downloading {url}\n")
            sys.stderr.flush()

    with contextlib.ExitStack() as stack:
        try:
            locked = stack.enter_context(
                file_lock(path, wait=wait, on_wait=tell)
            )
        except TimeoutError:
            raise DownloadError(
                f"Could not download {url}: another process has been "
                f"downloading it into {path.parent} for over {wait:g} s "
                f"(it holds {path.name}); {_HINT}."
            ) from None
        except OSError as e:
            raise DownloadError(
                f"Could not create the lock file {path} for {url} "
                f"({e.strerror}); set $KERAS_SAM_CACHE to a writable folder."
            ) from e
        yield locked


def _fingerprint(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"


def _cached(final: Path, marker: Path, expected: str, size) -> bool:
    """Whether `final` is there and verified; removes it if it is wrong."""
    try:
        st = final.stat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise DownloadError(
            f"The cache entry {final} is not a regular file; remove it."
        )
    if size is None or st.st_size == size:
        try:
            recorded = marker.read_text().split(" ", 1)
        except (OSError, UnicodeDecodeError):
            recorded = []
        if recorded == [expected, _fingerprint(st)]:
            return True
        known = len(recorded) == 2 and recorded[1] == _fingerprint(st)
        # A marker for this very file with another digest: no need to hash.
        if not known and sha256_file(final) == expected:
            _write_marker(marker, expected, final)
            return True
    marker.unlink(missing_ok=True)
    final.unlink()
    return False


def _write_marker(marker: Path, digest: str, final: Path) -> None:
    # Written in place: only the lock holder reads or writes it, and a torn
    # marker only costs one more hash.
    marker.write_text(f"{digest} {_fingerprint(final.stat())}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _claim_part(
    directory: Path, filename: str, limit: int, deadline: float, locked: bool
) -> Path:
    """A new part file of this process, holding the largest leftover part.

    Leftovers are the parts of `filename` (`<name>.<pid>.<random>.part`,
    or `<name>.part` of older versions) nobody writes: all of them under
    the lock, else those untouched for longer than `deadline`.
    """
    pattern = re.compile(re.escape(filename) + r"(?:\.\d+\.[0-9a-z_]+)?\.part")
    now = time.time()
    leftovers = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            st = entry.stat(follow_symlinks=False)
            if locked or now - st.st_mtime > deadline:
                leftovers.append((st.st_size, entry.path))
    for _ in range(100):
        name = f"{filename}.{os.getpid()}.{secrets.token_hex(4)}.part"
        part = directory / name
        try:
            os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    else:
        raise DownloadError(f"Could not create a part file in {directory}.")
    leftovers.sort(reverse=True)
    for i, (length, path) in enumerate(leftovers):
        with contextlib.suppress(FileNotFoundError):
            if i == 0 and 0 < length <= limit:
                os.replace(path, part)  # resume it under our name
            else:
                os.unlink(path)
    return part


def _publish(part: Path, final: Path, marker: Path, digest: str) -> None:
    """Rename the verified `part` to `final` and record its marker."""
    marker.unlink(missing_ok=True)
    os.replace(part, final)
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _write_marker(marker, digest, final)


def _transfer(
    url: str,
    part: Path,
    *,
    limit: int,
    size: int | None,
    timeout: float,
    deadline: float,
    deadline_at: float,
    progress: bool,
) -> bool:
    """Stream `url` into `part`, continuing its content if the server can.

    Returns whether the existing content was continued (a 206 answer).
    """
    offset = _size(part)
    headers = {"User-Agent": "keras-sam", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    remaining = deadline_at - time.monotonic()
    if remaining <= 0:
        raise _deadline_error(url, deadline, offset)
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(
            request, timeout=min(timeout, remaining)
        )
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # The part is not a prefix the server can continue: restart.
            os.truncate(part, 0)
            return _transfer(
                url,
                part,
                limit=limit,
                size=size,
                timeout=timeout,
                deadline=deadline,
                deadline_at=deadline_at,
                progress=progress,
            )
        raise DownloadError(
            f"Could not download {url}: HTTP {e.code} {e.reason}; {_HINT}."
        ) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        reason = getattr(reason, "strerror", None) or reason
        raise DownloadError(
            f"Could not download {url} ({reason}); {_HINT}."
        ) from e

    with response:
        status = response.status
        resumed = False
        total = None
        if offset and status == 206:
            match = _CONTENT_RANGE_RE.fullmatch(
                (response.headers.get("Content-Range") or "").strip()
            )
            if match is None or int(match.group(1)) != offset:
                raise _Discard(
                    f"Could not resume {url}: the server sent the range "
                    f"{response.headers.get('Content-Range')!r}, not bytes "
                    f"{offset}-; the part was deleted, call again."
                )
            resumed = True
            if match.group(3) != "*":
                total = int(match.group(3))
        elif status != 200:
            raise DownloadError(
                f"Could not download {url}: unexpected HTTP status {status}; "
                f"{_HINT}."
            )
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if length is not None:
            total = offset + length
        if total is not None and size is not None and total != size:
            raise _Discard(
                f"Could not download {url}: the server announces {total} "
                f"bytes, expected {size}; {_HINT}."
            )
        if total is not None and total > limit:
            raise _Discard(
                f"Could not download {url}: the server announces {total} "
                f"bytes, more than the cap of {limit} (`max_bytes`)."
            )
        bar = _ProgressBar(total, offset) if progress else None
        done = offset
        try:
            with open(part, "r+b") as f:
                f.seek(offset)
                f.truncate()
                while True:
                    if time.monotonic() >= deadline_at:
                        raise _deadline_error(url, deadline, done)
                    try:
                        # One system call at a time, so that a slow server
                        # cannot hold us past the deadline.
                        chunk = response.read1(min(_CHUNK, limit - done + 1))
                    except (http.client.HTTPException, OSError) as e:
                        raise DownloadError(
                            f"Download of {url} broke off after {done} bytes "
                            f"({type(e).__name__}: {e}); call again to "
                            f"resume, or {_HINT}."
                        ) from e
                    if not chunk:
                        break
                    if done + len(chunk) > limit:
                        what = "the expected size" if size else "`max_bytes`"
                        raise _Discard(
                            f"Could not download {url}: the server sent "
                            f"more than {limit} bytes ({what}), so it was "
                            "deleted."
                        )
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise _Discard(
                            f"Could not write {part} while downloading "
                            f"{url} ({e.strerror}); free some space or set "
                            "$KERAS_SAM_CACHE to another folder."
                        ) from e
                    done += len(chunk)
                    if bar is not None:
                        bar.update(done)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close(done)
        if total is not None and done != total:
            raise DownloadError(
                f"Download of {url} broke off after {done} of {total} "
                f"bytes; call again to resume, or {_HINT}."
            )
    return resumed


def _deadline_error(url: str, deadline: float, done: int) -> DownloadError:
    return DownloadError(
        f"Could not download {url} within the deadline of {deadline:g} s "
        f"({done} bytes received); call again to resume, or {_HINT}."
    )


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
