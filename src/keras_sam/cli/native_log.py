"""The native libraries' log lines, kept off a command's stderr.

TensorFlow, XLA and absl write notices from C++ straight to file descriptor
2: absl's "before InitializeLog" notice, oneDNN and CUDA probes at import,
Grappler's cost warnings at the first traced call. `TF_CPP_MIN_LOG_LEVEL`
does not reach all of them, and a command's user cannot act on any of them.
`NativeLogFilter` puts a pipe on descriptor 2 with a thread that drops such
lines and passes every other byte on. Python's `sys.stderr` is pointed at
the real stderr directly, line-buffered as Python's own, so the command's
own lines and progress (`\\r`, flushed) are never held back or reordered
among themselves, and a line is one write.

Only for commands whose process is theirs alone: a child process (Ray's)
would inherit the pipe and outlive its reader.
"""

import io
import os
import re
import sys
import threading

# absl/glog's prefix: severity (info, warning, error; fatal lines stay),
# MMDD, time (seconds since the epoch before absl is set up), thread id,
# source file:line.
_NATIVE_LINE = re.compile(rb"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")
# Lines without that prefix that belong to such notices.
_NATIVE_NOTICES = (
    b"WARNING: All log messages before absl::InitializeLog() is called",
    b"To enable the following instructions:",
)


def is_native_log_line(line: bytes) -> bool:
    """Whether `line` (bytes, without its newline) is a native library's
    info, warning or error log line."""
    return bool(_NATIVE_LINE.match(line)) or line.startswith(_NATIVE_NOTICES)


class NativeLogFilter:
    """Drop the native libraries' log lines from descriptor 2 between
    `start()` and `stop()`; everything else is passed on unchanged (a line
    when its newline arrives, an unfinished one at `stop`)."""

    def __init__(self):
        self._saved = None
        self._pipe_write = None
        self._thread = None
        self._stderr = None

    def start(self) -> bool:
        """Put the filter on descriptor 2; False (nothing done) where there
        is no descriptor 2 to filter."""
        if os.name != "posix" or self._thread is not None:
            return False
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return False
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        self._saved, self._pipe_write = saved, write_end
        self._thread = threading.Thread(
            target=_pass_on, args=(read_end, saved), daemon=True
        )
        self._thread.start()
        self._stderr = sys.stderr
        sys.stderr = io.TextIOWrapper(
            io.FileIO(saved, "w", closefd=False),
            encoding=getattr(self._stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            line_buffering=True,  # as Python's own stderr: a line, one write
        )
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Restore descriptor 2 and `sys.stderr`, after passing on what the
        pipe still holds (waiting at most `timeout` seconds)."""
        if self._thread is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stderr = self._stderr
        os.dup2(self._saved, 2)  # the pipe's last writer is now its own fd
        os.close(self._pipe_write)
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else it may still write there
            os.close(self._saved)
        self._thread = self._saved = self._pipe_write = self._stderr = None


def _pass_on(read_end: int, stderr: int) -> None:
    """Copy the pipe to `stderr`, a line at a time, without the native log
    lines; until every writer has closed the pipe."""
    pending = b""
    try:
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line for line in lines if not is_native_log_line(line)]
            if kept:
                _write(stderr, b"\n".join(kept) + b"\n")
        if pending and not is_native_log_line(pending):
            _write(stderr, pending)
    finally:
        os.close(read_end)


def _write(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:  # the real stderr is gone (closed, broken pipe)
        pass
