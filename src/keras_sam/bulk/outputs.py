"""Where a bulk run's results go: a local (or shared) folder, or a folder
on any filesystem pyarrow reaches (`s3://bucket/prefix`).

Results are written under the picture's mirrored name plus a suffix, the
names `keras-sam auto` and `embed` give them. A local folder is written in
place through `keras_sam.io` (temporary file, then rename). For a URI the
files are made in a local temporary folder by the same writers, then each
is copied to a hidden temporary name beside its destination and moved
over it, the marker file (the `.json`, or the embedding) last, so a
stopped run never leaves a marker whose other files are missing.
"""

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid

from keras_sam.bulk import listing


class Destination:
    """The output folder of a bulk run.

    Args:
        output: a local folder or a URI (`s3://bucket/results`).
    """

    def __init__(self, output: str):
        self.output = output
        self.remote = listing.is_uri(output)
        if self.remote:
            from pyarrow import fs

            self._filesystem, path = fs.FileSystem.from_uri(output)
            self._root = path.rstrip("/")
        else:
            self.output = os.path.abspath(output)

    def uri(self, name: str) -> str:
        """The full path or URI of the result named `name`."""
        if self.remote:
            return self.output.rstrip("/") + "/" + name
        return os.path.join(self.output, *name.split("/"))

    def existing(self) -> set[str]:
        """The names (relative, "/"-separated) of the files already in the
        folder and below it; one listing, however many pictures."""
        if self.remote:
            from pyarrow import fs

            info = self._filesystem.get_file_info(self._root)
            if info.type != fs.FileType.Directory:
                return set()
            selector = fs.FileSelector(self._root, recursive=True)
            return {
                posixpath.relpath(e.path, self._root)
                for e in self._filesystem.get_file_info(selector)
                if e.type == fs.FileType.File
            }
        names = set()
        for folder, _, files in os.walk(self.output):
            relative = os.path.relpath(folder, self.output)
            for file in files:
                path = file if relative == "." else os.path.join(relative, file)
                names.add(path.replace(os.sep, "/"))
        return names

    def read(self, name: str) -> bytes:
        """The contents of the file `name`, b"" if there is none."""
        if not self.remote:
            try:
                with open(self.uri(name), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return b""
        try:
            with self._filesystem.open_input_stream(
                f"{self._root}/{name}"
            ) as f:
                return f.read()
        except FileNotFoundError:
            return b""

    @contextlib.contextmanager
    def staging(self):
        """Yield a local folder to write results in under their names; for
        a local output it is the output folder itself, for a URI a
        temporary folder whose files `publish` copies out."""
        if not self.remote:
            yield self.output
            return
        folder = tempfile.mkdtemp(prefix="keras-sam-bulk-")
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged: str, names: list[str]) -> None:
        """Copy the files `names` from the staging folder to their
        destination, in that order (the marker last); nothing to do for a
        local output."""
        if not self.remote:
            return
        for name in names:
            final = f"{self._root}/{name}"
            parent, base = posixpath.split(final)
            temporary = f"{parent}/.{base}.{uuid.uuid4().hex}.part"
            self._filesystem.create_dir(parent, recursive=True)
            local = os.path.join(staged, *name.split("/"))
            with (
                open(local, "rb") as source,
                self._filesystem.open_output_stream(temporary) as sink,
            ):
                shutil.copyfileobj(source, sink, 1 << 20)
            self._filesystem.move(temporary, final)
