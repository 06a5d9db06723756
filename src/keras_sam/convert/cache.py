"""The cache of checkpoints already read, and where compiled programs go.

Reading a PyTorch checkpoint (`.pth`, `.pt`, `.bin`) needs PyTorch
(`torch.load(weights_only=True)`): importing it and unpickling take seconds
on every run, whatever the Keras backend. `read_checkpoint` reads such a
file once with `read_state_dict` and keeps the arrays it gave as a
safetensors file in the user cache folder; later runs read that with NumPy
alone. The entry holds the state dict as read (official names and PyTorch
layouts, float32, or float64 where the file has it), so the conversion to
Keras runs on it exactly as on the file itself: a model loaded from the
cache has the same weights as one loaded from the file.

Folder: `checkpoints/` in `default_cache_dir()` (`$KERAS_SAM_CACHE`, else
`$XDG_CACHE_HOME/keras-sam`, else `~/.cache/keras-sam`):

- `<sha256>.safetensors`: the state dict of the checkpoint whose content
  has SHA-256 `<sha256>`. Its metadata holds `format`, `version`,
  `source_sha256` and `content_sha256`, the SHA-256 of its header (the
  rest of it, as compact JSON with sorted keys) and of its data.
- `sources/<sha256 of the path>.json`: what a checkpoint path held when it
  was hashed: the real path, its `[device, inode, size, mtime_ns,
  ctime_ns]` and the SHA-256 of its content.
- `.lock`: locked (`flock`) while an entry is written or entries removed.

The rules, so that an entry is never used for a file it does not match
(docs/cache.md has the reasons):

1. The digest of a checkpoint is taken from its record only while its
   device, inode, size, modification time and change time are still the
   recorded ones; otherwise the file is hashed again (about 0.3 s for
   ViT-B). Every write to a file sets its change time to the current time,
   and no program can set it back, so a file rewritten in place, even with
   its old size and modification time restored, is hashed again.
2. File times advance in steps (a kernel tick): a file changed less than
   `RACY_SECONDS` before it is read is read but not cached, and nothing is
   cached unless the file's fingerprint was the same before it was read and
   after it was hashed.
3. An entry is used only when its header passes `read_state_dict`'s checks,
   names the checkpoint's digest, and the header and data hash to its
   `content_sha256`. Otherwise it is deleted and the checkpoint is read
   from the file (and stored again): a damaged or edited entry costs one
   slow read, never a wrong model. The data may be hashed on a thread
   while the caller works on the arrays (`open_checkpoint`), whose result
   is then kept only if they match.
4. The folder is created private (0o700) and not used if others can write
   in it or another user owns it: the digests guard against damage and
   stale entries, not against someone who can write in the folder.
5. Entries and records are written to a temporary name in the folder,
   flushed to disk and renamed (`keras_sam.io.atomic_output`), so
   concurrent processes each write complete files and readers see the old
   one or the new one; the lock is taken only to write and evict.
6. Nothing in the folder runs code when read: safetensors (a JSON header
   and raw floats) read with NumPy, and JSON records.

An entry is as large as the checkpoint's tensors in float32 (ViT-B 358
MiB, ViT-L 1.2 GiB, ViT-H 2.4 GiB). After each write, the least recently
used entries (by modification time, which every use sets) are removed
while the entries together exceed `MAX_BYTES` (5 GiB: the three official
models); the one just written is always kept.

`$KERAS_SAM_NO_CACHE=1` (or `use_cache=False`) turns the cache off: the
file is read each time and nothing is written. `clear()` empties it
(or delete the folder). Writing failures (a read-only or full disk) do not
fail the read: they are reported as a `RuntimeWarning`.

The compiled-program caches of the backends (`compiled_dir`) live next to
it; see `keras_sam.backend.compile.use_persistent_cache`.
"""

import hashlib
import json
import mmap
import os
import re
import shutil
import stat
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from keras_sam import io
from keras_sam.convert import checkpoint
from keras_sam.convert.download import default_cache_dir
from keras_sam.convert.download import file_lock
from keras_sam.convert.download import sha256_file

DISABLE_VARIABLE = "KERAS_SAM_NO_CACHE"
FORMAT = "keras_sam.checkpoint_cache"
# Entries of another version are not used (and are replaced): change it with
# the entry format or with what `read_state_dict` accepts or gives.
VERSION = "1"
MAX_BYTES = 5 << 30
# Seconds to wait for another process writing an entry before giving up
# storing (the read itself never waits).
LOCK_WAIT_S = 120.0
# A file changed less than this long before it was read is not cached: file
# times advance in steps (a kernel tick), so a second write within the same
# step would leave its fingerprint as it was.
RACY_SECONDS = 2.0
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_ENTRY_RE = re.compile(r"[0-9a-f]{64}\.safetensors")
_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}
_NUMPY_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}
_CHUNK = 1 << 24


def enabled() -> bool:
    """Whether the caches are on: `$KERAS_SAM_NO_CACHE` unset, empty or
    "0"."""
    return os.environ.get(DISABLE_VARIABLE, "").strip() in ("", "0")


def checkpoints_dir() -> Path:
    """The folder of the cached checkpoints."""
    return default_cache_dir() / "checkpoints"


def compiled_dir() -> Path:
    """The folder of the backends' persistent compilation caches (see
    `keras_sam.backend.compile.use_persistent_cache`)."""
    return default_cache_dir() / "compiled"


def read_checkpoint(
    path: str | os.PathLike, *, use_cache: bool = True
) -> dict[str, np.ndarray]:
    """`read_state_dict(path)`, through the cache for PyTorch files.

    A safetensors file is read directly (that is fast already); a PyTorch
    file is read from its cache entry when there is a valid one, else read
    and stored (see the module docstring for the rules).

    Args:
        path: The checkpoint file.
        use_cache: False reads the file and writes nothing, as does
            `$KERAS_SAM_NO_CACHE=1`.

    Returns:
        Parameter names to arrays, equal to those `read_state_dict` gives;
        from the cache they are read-only views of the memory-mapped
        entry.

    Raises:
        As `read_state_dict`; a cache that cannot be written only warns.
    """
    return open_checkpoint(path, use_cache=use_cache).result(lambda s: s)


class StaleEntry(Exception):
    """A cache entry's data did not match its digest (it is deleted)."""


class OpenedCheckpoint:
    """A state dict whose cache entry may still be being verified.

    `state` is usable at once; a cache entry's data is hashed on another
    thread meanwhile (hashlib releases the GIL, so on two cores the check
    costs no time beside work on the arrays; 0.27 s for ViT-B otherwise).
    `verified()` waits for the check and raises `StaleEntry` when the data
    do not match their digest: whatever was made from `state` must then be
    discarded. `result(make)` does that bookkeeping.
    """

    def __init__(self, path, use_cache: bool, state, check=None):
        self.path, self.use_cache = path, use_cache
        self.state = state
        self._check = check

    def verified(self) -> None:
        """Wait for the check; raise `StaleEntry` if the entry was stale."""
        if self._check is not None:
            self._check()

    def stale(self) -> bool:
        """Wait for the check; whether the entry was stale."""
        try:
            self.verified()
        except StaleEntry:
            return True
        return False

    def result(self, make):
        """`make(state)`, returned once `state` is verified; when its cache
        entry turns out stale (also when `make` raised), `make` runs again
        on the checkpoint read afresh (the stale entry is gone by then). An
        error of `make` on verified data is raised as it is."""
        opened = self
        for _ in range(2):  # another process may store a bad entry again
            try:
                out = make(opened.state)
            except BaseException:
                if not opened.stale():  # else a stale entry explains it
                    raise
            else:
                if not opened.stale():
                    return out
            opened = open_checkpoint(opened.path, use_cache=self.use_cache)
        return make(checkpoint.read_state_dict(self.path))


def open_checkpoint(
    path: str | os.PathLike, *, use_cache: bool = True
) -> OpenedCheckpoint:
    """`read_checkpoint`, returned before a cache entry's data has been
    verified: see `OpenedCheckpoint` (use `result`, or call `verified`
    before anything made from the arrays is used).

    Raises:
        As `read_state_dict`; a cache that cannot be written only warns.
    """

    def direct():
        return OpenedCheckpoint(
            path, use_cache, checkpoint.read_state_dict(path)
        )

    if (
        not use_cache
        or not enabled()
        or checkpoint.checkpoint_format(path) != "torch"
    ):
        return direct()
    real = os.path.realpath(path)
    try:
        before = os.stat(real)
    except OSError:  # read_state_dict says what is wrong
        return direct()
    folder = checkpoints_dir()
    if folder.exists() and not io.private_folder(folder):
        warnings.warn(
            f"keras-sam does not use its checkpoint cache {folder}: other "
            "users can write in it (make it yours, mode 0o700, or set "
            f"${DISABLE_VARIABLE}=1).",
            RuntimeWarning,
            stacklevel=3,
        )
        return direct()
    digest = _recorded_digest(folder, real, before)
    recorded = digest is not None
    if not recorded:
        # A new or changed file: hash it first, an entry may hold it.
        digest = sha256_file(real)
        if _fingerprint(os.stat(real)) != _fingerprint(before):
            return direct()  # changing: no cache
    entry = folder / f"{digest}.safetensors"
    opened = _open_entry(entry, digest)
    if opened is not None:
        state, wait = opened

        def check():
            wait()  # raises StaleEntry
            if not recorded:
                _store(folder, real, before, digest, None)
            _touch(entry)

        return OpenedCheckpoint(path, use_cache, state, _once(check))
    state = checkpoint.read_state_dict(path)
    _store(folder, real, before, digest, state)
    return OpenedCheckpoint(path, use_cache, state)


def _once(fn):
    """`fn` run at most once; later calls repeat its outcome."""
    outcome = []

    def call():
        if not outcome:
            try:
                fn()
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)
        if outcome[0] is not None:
            raise outcome[0]

    return call


def clear() -> int:
    """Remove every cached checkpoint, record and compiled program; returns
    the bytes freed."""
    freed = 0
    folder = checkpoints_dir()
    if folder.is_dir():
        with file_lock(folder / ".lock", wait=LOCK_WAIT_S):
            for child in list(folder.iterdir()):
                if child.name == ".lock":
                    continue
                freed += _remove(child)
    compiled = compiled_dir()
    if compiled.is_dir():
        freed += _remove(compiled)
    return freed


def info() -> dict:
    """The cache folders, their entries and sizes in bytes, and whether
    the caches are on."""
    folder = checkpoints_dir()
    entries = sorted(
        (
            (p.name, p.stat().st_size)
            for p in (folder.iterdir() if folder.is_dir() else ())
            if _ENTRY_RE.fullmatch(p.name)
        ),
    )
    compiled = compiled_dir()
    return {
        "enabled": enabled(),
        "checkpoints": str(folder),
        "entries": [{"file": n, "bytes": s} for n, s in entries],
        "checkpoint_bytes": sum(s for _, s in entries),
        "compiled": str(compiled),
        "compiled_bytes": _tree_size(compiled),
        "max_bytes": MAX_BYTES,
    }


# ---------------------------------------------------------------------------
# Records: path + fingerprint -> content digest


def _fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _record_path(folder: Path, real: str) -> Path:
    name = hashlib.sha256(os.fsencode(real)).hexdigest()[:32]
    return folder / "sources" / f"{name}.json"


def _recorded_digest(folder: Path, real: str, st: os.stat_result):
    """The recorded digest of `real` if its fingerprint is still `st`'s."""
    try:
        with open(_record_path(folder, real), "rb") as f:
            record = json.loads(f.read(1 << 16))
    except (OSError, ValueError, RecursionError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("path") != real
        or record.get("stat") != _fingerprint(st)
        or not isinstance(record.get("sha256"), str)
        or not _DIGEST_RE.fullmatch(record["sha256"])
    ):
        return None
    return record["sha256"]


# ---------------------------------------------------------------------------
# Entries


def _canonical(header: Mapping) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _header_bytes(header: Mapping) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)  # data aligned to 8 bytes


def _write_entry(entry: Path, state: Mapping, source_digest: str) -> None:
    """`state` as a safetensors file written tensor by tensor (no copy of
    the whole), its content digest filled in once the data is written."""
    header, offset = {}, 0
    for key, value in state.items():
        array = np.asarray(value)
        dtype = _DTYPES.get(array.dtype.newbyteorder("<"))
        if dtype is None:
            raise ValueError(f"cannot cache {key!r} of dtype {array.dtype}")
        header[key] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "source_sha256": source_digest,
    }
    header = {"__metadata__": metadata, **header}
    digest = hashlib.sha256(_canonical(header))
    metadata["content_sha256"] = "0" * 64
    placeholder = _header_bytes(header)
    with io.atomic_output(entry, ".safetensors") as f:
        f.write(len(placeholder).to_bytes(8, "little"))
        f.write(placeholder)
        for key, value in state.items():
            dtype = _NUMPY_DTYPES[header[key]["dtype"]]
            array = np.ascontiguousarray(value, dtype=dtype)
            data = array.reshape(-1).view(np.uint8)
            digest.update(data)
            f.write(data)
        metadata["content_sha256"] = digest.hexdigest()
        final = _header_bytes(header)
        if len(final) != len(placeholder):  # cannot happen: same digits
            raise ValueError("the header changed length")
        f.seek(8)
        f.write(final)


def _open_entry(entry: Path, source_digest: str):
    """`(state, wait)` of `entry`, its data being hashed on a thread, or
    None (missing or a bad header; a bad one is deleted). `wait()` joins
    the thread and raises `StaleEntry`, deleting the entry, when the data
    do not match."""
    try:
        f = open(entry, "rb")
    except OSError:
        return None
    with f:
        st = os.fstat(f.fileno())
        try:
            state, check = _read_entry(f, entry, st.st_size, source_digest)
        except (ValueError, OSError, KeyError, TypeError):
            _delete_entry(entry, st)
            return None
    outcome = []

    def hash_data():
        try:
            outcome.append(check())
        except BaseException:  # an I/O error counts as a mismatch
            outcome.append(False)

    thread = threading.Thread(target=hash_data, daemon=True)
    thread.start()

    def wait():
        thread.join()
        if not outcome[0]:
            _delete_entry(entry, st)
            raise StaleEntry(f"{entry} does not match its digest")

    return state, wait


def _delete_entry(entry: Path, st: os.stat_result) -> None:
    """Delete `entry` if it is still the file `st` describes (not one
    renamed there since)."""
    try:
        if _fingerprint(os.stat(entry)) == _fingerprint(st):
            os.unlink(entry)
    except OSError:
        pass


def _read_entry(f, entry: Path, size: int, source_digest: str):
    """`(state, check)`: the entry's arrays once its header passes the
    checks, and a function that hashes the header and data and says
    whether they match the header's `content_sha256`."""
    header, data_start = checkpoint.read_safetensors_header(f, entry, size)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        raise ValueError("no metadata")
    expected = metadata.pop("content_sha256", None)
    if (
        metadata.get("format") != FORMAT
        or metadata.get("version") != VERSION
        or metadata.get("source_sha256") != source_digest
        or not isinstance(expected, str)
    ):
        raise ValueError("not an entry of this checkpoint")
    canonical = _canonical(header)
    tensors = [(k, v) for k, v in header.items() if k != "__metadata__"]
    tensors.sort(key=lambda item: item[1]["data_offsets"][0])
    position = 0
    for _, spec in tensors:
        begin, end = spec["data_offsets"]
        if begin != position:
            raise ValueError("the tensors do not tile the data")
        position = end
    if data_start + position != size:
        raise ValueError("the data does not end the file")
    # Mapped, not copied: the pages come from the file system's cache, and
    # the arrays are views of them (read-only) until the loader copies each
    # into its variable.
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out = {}
    for key, spec in header.items():  # in the file's order
        if key == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        dtype = _NUMPY_DTYPES[spec["dtype"]]
        out[key] = np.frombuffer(
            mapped, dtype, (end - begin) // dtype.itemsize, data_start + begin
        ).reshape(spec["shape"])

    def check() -> bool:
        digest = hashlib.sha256(canonical)
        data = memoryview(mapped)[data_start:]
        for start in range(0, position, _CHUNK):
            digest.update(data[start : start + _CHUNK])
        return digest.hexdigest() == expected

    return out, check


def _touch(entry: Path) -> None:
    try:
        os.utime(entry)  # the least recently used go first
    except OSError:
        pass


def _store(folder: Path, real: str, before, digest: str, state) -> None:
    """Record `real`'s digest and, unless `state` is None, write its entry;
    then remove the least recently used entries beyond `MAX_BYTES`. Only
    if `real` did not change since `before` and had not changed for
    `RACY_SECONDS` before it; failures warn."""
    changed = max(before.st_mtime_ns, before.st_ctime_ns)
    if time.time_ns() - changed < RACY_SECONDS * 1e9:
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / "sources").mkdir(mode=0o700, exist_ok=True)
        with file_lock(folder / ".lock", wait=LOCK_WAIT_S):
            if _fingerprint(os.stat(real)) != _fingerprint(before):
                return  # changed while it was read
            io.remove_leftovers(folder)
            io.remove_leftovers(folder / "sources")
            entry = folder / f"{digest}.safetensors"
            if state is not None and not entry.exists():
                _write_entry(entry, state, digest)
            record = {
                "path": real,
                "stat": _fingerprint(before),
                "sha256": digest,
            }
            with io.atomic_output(_record_path(folder, real), ".json") as f:
                f.write(json.dumps(record).encode())
            _evict(folder, keep=entry)
    except TimeoutError:
        return  # another process is writing: it will be cached next time
    except (OSError, ValueError) as e:
        warnings.warn(
            f"keras-sam could not write its checkpoint cache in {folder} "
            f"({_reason(e)}); the checkpoint was read all the same. "
            f"Set ${DISABLE_VARIABLE}=1 to turn the cache off.",
            RuntimeWarning,
            stacklevel=3,
        )


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _evict(folder: Path, keep: Path) -> None:
    entries = []
    for p in folder.iterdir():
        if _ENTRY_RE.fullmatch(p.name):
            st = p.stat()
            entries.append((p != keep, -st.st_mtime_ns, st.st_size, p))
    entries.sort()
    total = 0
    live = set()
    for _, _, size, p in entries:
        total += size
        if total > MAX_BYTES and p != keep:
            p.unlink(missing_ok=True)
        else:
            live.add(p.name.split(".")[0])
    for record in (folder / "sources").glob("*.json"):
        try:
            digest = json.loads(record.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            digest = None
        if digest not in live:
            record.unlink(missing_ok=True)


def _remove(path: Path) -> int:
    size = _tree_size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return size


def _tree_size(path: Path) -> int:
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    return sum(_tree_size(child) for child in path.iterdir())
