"""Reading users' pictures and writing outputs, for every front end.

The command line (and later the server and bulk runs) read pictures and
write results only through this module, so that every picture is read the
same way and every output is written atomically: to a temporary file in the
destination folder, then renamed over the final name, so that an
interrupted run never leaves a half-written file.
"""

import contextlib
import errno
import json
import os
import re
import signal
import struct
import tempfile
import threading
import warnings
import zlib
from io import BytesIO

import numpy as np

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)

MAX_PIXELS = 178_956_970
"""The largest picture `read_image` decodes, in pixels (about 13,400 x
13,400): Pillow's own hard limit, twice `PIL.Image.MAX_IMAGE_PIXELS`."""

# What Pillow raises for a damaged file, besides `DecompressionBombError`.
_DAMAGED = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    struct.error,
    zlib.error,
)


def read_image(
    path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """A picture file as viewers show it: a new RGB uint8 `(H, W, 3)` array.

    The one picture reader of the command line, the server and bulk runs.
    Any format Pillow reads (PNG, JPEG, TIFF, WebP, BMP, GIF, ...); of an
    animated or multi-page file, the first frame. The EXIF orientation is
    applied (`PIL.ImageOps.exif_transpose`), so that a point given in pixels
    lands where the user saw it. Pillow modes become RGB as follows:

    - "RGB", "L", "1" (0 or 255), "CMYK", "YCbCr", "LAB", "HSV": Pillow's
      conversion (CMYK and LAB without the file's ICC profile).
    - "RGBA", "LA", "P", "PA" (palette through RGBA), "RGBa", "La": the
      alpha channel is dropped, so a transparent pixel shows the colour
      stored under it, as the official SAM scripts read pictures
      (`cv2.imread`, `PIL.Image.convert("RGB")`).
    - 16-bit grey ("I;16", "I;16B", "I;16L", "I;16N"): the high byte,
      `v >> 8`, the same rule Pillow applies to 16-bit RGB and RGBA PNGs and
      TIFFs (it opens them as 8-bit "RGB"/"RGBA"), so a picture reads the
      same in grey and in colour, and one stored as `v * 257` reads back as
      its 8-bit `v` exactly.
    - "I" (32-bit integers): as 16-bit when every value is in 0..65535,
      otherwise min-max scaled to 0..255 like "F".
    - "F" (32-bit float): `round(v * 255)` when every finite value is in
      [0, 1], otherwise min-max scaled, `round((v - min) / (max - min) *
      255)` (0 if constant); NaN and infinities read as 0.
    Grey pictures are repeated into the three channels.

    Pillow's warnings (a large size, corrupt metadata) are not passed on: a
    read either returns a picture or raises.

    Args:
        path: the picture file.
        max_pixels: pictures with more pixels (width x height, read from
            the header before any pixel is decoded) are refused as possible
            decompression bombs. Pillow's own limit, twice
            `PIL.Image.MAX_IMAGE_PIXELS`, applies as well.

    Raises:
        ValueError: the file is missing, not a picture, damaged or
            truncated ("cannot read ... as an image"), or has more than
            `max_pixels` pixels ("refusing ..."); the message names the
            file.
    """
    return _read(path, os.fspath(path), max_pixels)


def read_image_bytes(
    data: bytes, name: str = "upload", *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """`read_image` of a picture file's contents (an upload, say); `name`
    stands for the file in error messages."""
    return _read(BytesIO(data), name, max_pixels)


def _read(source, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image
    from PIL import ImageOps
    from PIL import UnidentifiedImageError

    if max_pixels < 1:
        raise ValueError(
            f"max_pixels must be at least 1. Received: max_pixels={max_pixels}"
        )
    # Warning filters are process-wide: while a picture is read here, other
    # threads' warnings are hidden too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # `open` reads only the header; `load` decodes the pixels.
            with Image.open(source) as im:
                width, height = im.size
                if width * height <= max_pixels:
                    im.load()
                    ImageOps.exif_transpose(im, in_place=True)
                    return _to_rgb(im)
        except Image.DecompressionBombError as e:
            # Pillow's sentence names the size and its limit.
            detail = str(e).split(", could be")[0]
            raise ValueError(
                f"refusing {name} as a possible decompression bomb ({detail})"
            ) from None
        except UnidentifiedImageError as e:
            raise ValueError(
                f"cannot read {name} as an image (Pillow cannot identify "
                "its format)"
            ) from e
        except _DAMAGED as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ValueError(
                f"cannot read {name} as an image ({reason})"
            ) from e
    raise ValueError(
        f"refusing {name} as a possible decompression bomb ({width}x{height}"
        f" = {width * height} pixels, more than max_pixels={max_pixels})"
    )


def _to_rgb(im) -> np.ndarray:
    """A loaded Pillow image of any mode as a new RGB uint8 `(H, W, 3)`
    array, by the rules in `read_image`."""
    if im.mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
    elif im.mode == "I":
        values = np.asarray(im)
        if values.size == 0 or (values.min() >= 0 and values.max() <= 65535):
            grey = (values >> 8).astype(np.uint8)
        else:
            grey = _stretch(values)
    elif im.mode == "F":
        grey = _float_to_uint8(np.asarray(im))
    else:
        if im.mode in ("P", "PA", "RGBa"):
            # Converting a palette picture with transparency straight to RGB
            # warns; through RGBA it does not, and the colours are the same.
            im = im.convert("RGBA")
        elif im.mode == "La":
            im = im.convert("LA")  # Pillow converts "La" to nothing else
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im)  # a copy: Pillow's array is read-only
    return np.repeat(grey[..., None], 3, axis=-1)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] times 255, others min-max scaled; non-finite 0."""
    finite = values[np.isfinite(values)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        return _stretch(values)
    values = np.where(np.isfinite(values), values, 0)
    return np.rint(values.astype(np.float64) * 255).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to 0..255 over the finite values; non-finite 0, and
    all 0 for a constant picture."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) / ((high - low) or 1.0)
    return np.rint(np.where(finite, scaled, 0) * 255).astype(np.uint8)


def collect_images(
    inputs: list[str],
    *,
    recursive: bool = False,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Picture files named by `inputs` (see `scan_images`).

    Raises:
        ValueError: an input is neither a file nor a folder, or nothing was
            found.
    """
    images, _ = scan_images(inputs, recursive=recursive, exclude=exclude)
    if not images:
        raise ValueError("no images found")
    return images


# Why `scan_images` passed over a path.
SKIP_NOT_PICTURE = "not a picture"
SKIP_HIDDEN = "hidden"
SKIP_SUBFOLDER = "subfolder"
SKIP_FOLDER_LINK = "link to a folder"
SKIP_EXCLUDED = "excluded"
SKIP_DUPLICATE = "given twice"
SKIP_UNREADABLE = "cannot be listed"


def scan_images(
    inputs: list[str],
    *,
    recursive: bool = False,
    exclude: tuple[str, ...] = (),
) -> tuple[list[str], list[tuple[str, str]]]:
    """Picture files named by `inputs`, and what was passed over.

    A file named in `inputs` is taken as given, whatever its suffix (the
    reader decides). A folder gives its pictures by suffix
    (`IMAGE_SUFFIXES`, any case), in sorted order, and with `recursive` its
    subfolders' pictures after its own. Passed over, each with its reason
    (the `SKIP_*` strings): other files in folders, hidden files and folders
    (names starting with "."), subfolders unless `recursive`, links to
    folders (never followed), the folders in `exclude` (an output folder),
    subfolders that cannot be listed, and a file met a second time.

    Returns:
        `(images, skipped)`: picture paths (joined to the folder as given)
        and `(path, reason)` pairs.

    Raises:
        ValueError: an input is neither a file nor a folder, or a folder
            given cannot be listed.
    """
    images, skipped, seen = [], [], set()
    excluded = {os.path.realpath(p) for p in exclude}

    def add(path):
        real = os.path.realpath(path)
        if real in seen:
            skipped.append((path, SKIP_DUPLICATE))
        else:
            seen.add(real)
            images.append(path)

    def walk(folder, top):
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if top:
                raise ValueError(
                    f"cannot list the folder {folder}: {e.strerror or e}"
                ) from None
            skipped.append((folder, SKIP_UNREADABLE))
            return
        subfolders = []
        for entry in entries:
            path = os.path.join(folder, entry.name)
            if entry.name.startswith("."):
                skipped.append((path, SKIP_HIDDEN))
            elif _is_dir(entry):
                if os.path.realpath(path) in excluded:
                    skipped.append((path, SKIP_EXCLUDED))
                elif not recursive:
                    skipped.append((path, SKIP_SUBFOLDER))
                elif entry.is_symlink():
                    skipped.append((path, SKIP_FOLDER_LINK))
                else:
                    subfolders.append(path)
            elif not entry.name.lower().endswith(IMAGE_SUFFIXES):
                skipped.append((path, SKIP_NOT_PICTURE))
            else:
                add(path)
        for path in subfolders:
            walk(path, top=False)

    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            walk(item, top=True)
        elif os.path.isfile(item):
            add(item)
        elif os.path.exists(item):
            raise ValueError(f"not a file or folder: {item}")
        else:
            raise ValueError(f"no such file or folder: {item}")
    return images, skipped


def _is_dir(entry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def mirrored_names(images: list[str], inputs: list[str]) -> list[str]:
    """Names that keep `images` apart below an output folder.

    Each picture's path relative to the folder holding all of `inputs`
    (a folder as given, a file's parent folder), with its extension:
    one folder given gives its own tree (`a.jpg`, `a.png`, `sub/a.png`),
    two folders `x` and `y` give `x/p.png` and `y/p.png`. Distinct paths
    give distinct names, so no two pictures share an output.
    """
    anchors = [
        os.path.abspath(item)
        if os.path.isdir(item)
        else os.path.dirname(os.path.abspath(item))
        for item in map(os.fspath, inputs)
    ]
    base = os.path.commonpath(anchors)
    return [os.path.relpath(os.path.abspath(p), base) for p in images]


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or below it, links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# Temporary files: ".<final name>.<pid>.<random>.part[<suffix>]", hidden,
# in the destination folder; the process id tells `remove_leftovers`
# whether the writer is gone.
_PART = re.compile(r"\A\..+\.(\d+)\.[a-z0-9_]+\.part(\.[^/]*)?\Z")


def private_folder(folder: str | os.PathLike, *, create: bool = False) -> bool:
    """Whether `folder` is a folder of this user that no one else can write
    in (`create`: made first if missing, mode 0o700, parents as usual).

    Caches whose files are trusted when read (compiled programs, converted
    weights) are used only in such a folder: anyone who can write in it
    could put there what this user's programs then run or load.
    """
    import stat

    try:
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.stat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
        return False
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def _temporary(path: str, suffix: str = "") -> tuple[int, str]:
    directory, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(
        prefix=f".{name[:100]}.{os.getpid()}.",
        suffix=".part" + suffix,
        dir=directory,
    )


def remove_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove from `folder` (not below it) the temporary files of writers
    that stopped before renaming them (a killed run), and return their
    paths. Only this module's temporary names whose process has ended are
    removed, never another file."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _PART.match(name)
        if match is None or _running(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":
        return True  # Windows' os.kill would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False
    except OSError:
        return True  # another user's process
    return True


def file_mode() -> int:
    """The mode `open` gives a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the only portable way to read it
    os.umask(mask)
    return mask


def _finish(fd: int) -> None:
    """Give a complete temporary file the usual mode (mkstemp makes it
    0o600) and flush it to disk."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, file_mode())
    os.fsync(fd)


class OutputGroup:
    """Output files that appear together or not at all.

    Each file is written to a temporary name in its destination folder
    (`open`, `path`); `commit` checks every destination, then renames all
    of them, with Ctrl-C held back until the last rename; `discard` removes
    what was not renamed. Use it through `output_group()`.
    """

    def __init__(self):
        self._pending: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def open(self, path: str | os.PathLike, suffix: str = ""):
        """Yield a binary file; when the block ends it is complete and
        waits for `commit` to become `path`."""
        path = os.fspath(path)
        try:
            fd, tmp = _temporary(path, suffix)
            self._pending.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                _finish(f.fileno())
        except OSError as e:
            raise _cannot_write(e, path) from e

    @contextlib.contextmanager
    def path(self, path: str | os.PathLike, suffix: str = ""):
        """Yield a temporary path ending in `suffix`, for a library that
        writes a file by name; when the block ends the file waits for
        `commit` to become `path`."""
        path = os.fspath(path)
        try:
            fd, tmp = _temporary(path, suffix)
            os.close(fd)
            self._pending.append((tmp, path))
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                _finish(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise _cannot_write(e, path) from e

    def commit(self) -> None:
        """Rename every file to its destination; none if a destination
        is a folder."""
        for _, final in self._pending:
            if os.path.isdir(final):
                raise IsADirectoryError(
                    errno.EISDIR, "cannot write (a folder has that name)", final
                )
        with _interrupts_held():
            for tmp, final in self._pending:
                try:
                    os.replace(tmp, final)
                except OSError as e:
                    raise _cannot_write(e, final) from e
            self._pending = []

    def discard(self) -> None:
        """Remove the temporary files not renamed."""
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending = []


def _cannot_write(error: OSError, path: str) -> OSError:
    if str(error.strerror or "").startswith("cannot write"):
        return error
    reason = error.strerror or str(error) or type(error).__name__
    return OSError(error.errno, f"cannot write ({reason})", path)


@contextlib.contextmanager
def output_group():
    """An `OutputGroup` committed when the block ends; if the block (or
    the commit) fails, no file of the group is renamed into place and
    every temporary file is removed."""
    group = OutputGroup()
    try:
        yield group
        group.commit()
    finally:
        group.discard()


@contextlib.contextmanager
def _interrupts_held():
    """Ctrl-C (SIGINT) during the block raises KeyboardInterrupt after it.
    Only the main thread can do this, and only where SIGINT raises
    KeyboardInterrupt; elsewhere the block runs as it is."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ""):
    """Yield a binary file object whose contents replace `path` only when
    the block completes; on any error the temporary file is removed. The
    file gets the usual mode (0o666 less the umask)."""
    with output_group() as group, group.open(path, suffix) as f:
        yield f


def write_png(
    array: np.ndarray,
    path: str | os.PathLike,
    group: OutputGroup | None = None,
) -> None:
    """Write a uint8 `(H, W, 3)` or `(H, W)` array as a PNG, atomically
    (or as part of `group`).

    A colour picture (an overlay on a photo) is deflated at zlib's level 1:
    such pictures shrink little more at higher levels, which take several
    times as long. A mask (two values, long runs) keeps level 6, where its
    file is much smaller at little cost.
    """
    from PIL import Image

    array = np.asarray(array)
    level = 1 if array.ndim == 3 else 6
    with _open(path, group) as f:
        Image.fromarray(array).save(f, format="PNG", compress_level=level)


def jsonable(value):
    """`value` with NumPy arrays and scalars turned into lists and numbers."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(
    data, path: str | os.PathLike, group: OutputGroup | None = None
) -> None:
    """Write `data` as indented JSON, atomically (or as part of `group`)."""
    with _open(path, group) as f:
        f.write(json.dumps(data, indent=2).encode())


def _open(path, group):
    return group.open(path) if group is not None else atomic_output(path)
