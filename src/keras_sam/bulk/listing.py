"""Pictures on any filesystem pyarrow reaches (`s3://`, `gs://`,
`file://`, ...), listed and read for bulk runs.

Local paths are listed by `keras_sam.io.scan_images`; this module does the
same for URIs, with the same rules (picture suffixes, hidden names skipped,
subfolders only when recursive) and names mirrored as
`keras_sam.io.mirrored_names` mirrors local paths.
"""

import posixpath
import re

from keras_sam import io

# "s3://bucket/key", "file:///tmp/x"; not "C:\\x" or a relative path.
_URI = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(text: str) -> bool:
    """Whether `text` names a file through a URI scheme (`s3://...`)."""
    return bool(_URI.match(str(text)))


def _filesystem(uri: str):
    """`(pyarrow filesystem, path in it)` of `uri`; a ValueError naming it
    when pyarrow cannot open it."""
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise ValueError(f"cannot open {uri}: {e}") from e


def _scheme_prefix(uri: str) -> str:
    """What to put before a filesystem path to get a URI back:
    `s3://` for `s3://bucket/key` (path `bucket/key`), `file://` for
    `file:///tmp/x` (path `/tmp/x`)."""
    return uri[: uri.index("://") + 3]


def list_pictures(
    inputs: list[str], *, recursive: bool = False
) -> list[tuple[str, str]]:
    """The pictures that `inputs` (URIs of files or folders, all on one
    kind of filesystem) name, as `(uri, name)`.

    A file URI is taken as given; a folder gives its files with a picture
    suffix (`keras_sam.io.IMAGE_SUFFIXES`) in sorted order, hidden names
    (starting with ".") skipped, with `recursive` its subfolders' as well.
    `name` is the picture's path relative to the folder holding every
    input, extension kept (as `keras_sam.io.mirrored_names`), so distinct
    pictures get distinct names.

    Raises:
        ValueError: an input cannot be opened or does not exist, the
            inputs mix filesystems, or nothing was found.
    """
    from pyarrow import fs

    found, anchors, kinds = [], [], set()
    for uri in inputs:
        filesystem, path = _filesystem(uri)
        kinds.add(_scheme_prefix(uri))
        try:
            info = filesystem.get_file_info(path)
        except OSError as e:
            raise ValueError(f"cannot open {uri}: {e}") from e
        prefix = _scheme_prefix(uri)
        if info.type == fs.FileType.File:
            found.append((prefix, path))
            anchors.append(posixpath.dirname(path))
        elif info.type == fs.FileType.Directory:
            selector = fs.FileSelector(path, recursive=recursive)
            try:
                entries = filesystem.get_file_info(selector)
            except OSError as e:
                raise ValueError(f"cannot list {uri}: {e}") from e
            base = path.rstrip("/")
            for entry in sorted(entries, key=lambda e: e.path):
                relative = posixpath.relpath(entry.path, base)
                if (
                    entry.type == fs.FileType.File
                    and entry.base_name.lower().endswith(io.IMAGE_SUFFIXES)
                    and not any(p.startswith(".") for p in relative.split("/"))
                ):
                    found.append((prefix, entry.path))
            anchors.append(base)
        else:
            raise ValueError(f"no such file or folder: {uri}")
    if len(kinds) > 1:
        raise ValueError(
            "the inputs are on different filesystems "
            f"({', '.join(sorted(kinds))}); give one kind per run"
        )
    common = posixpath.commonpath(anchors) if anchors else ""
    pictures, seen = [], set()
    for prefix, path in found:
        if path in seen:
            continue
        seen.add(path)
        pictures.append((prefix + path, posixpath.relpath(path, common)))
    if not pictures:
        raise ValueError(f"no pictures found in {' '.join(inputs)}")
    return pictures


def read_picture(source: str):
    """The picture at a local path or a URI, decoded by the shared reader
    (`keras_sam.io.read_image`, or `read_image_bytes` of the URI's
    contents): RGB uint8 `(H, W, 3)`.

    Raises:
        ValueError: the file cannot be read or is not a picture; the
            message names it.
    """
    if not is_uri(source):
        return io.read_image(source)
    filesystem, path = _filesystem(source)
    try:
        with filesystem.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {source}: {e}") from e
    return io.read_image_bytes(data, name=source)
