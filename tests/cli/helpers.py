"""Running the `keras-sam` console script in a subprocess, for the command
line tests: a clean environment, optional umask and file size limit; or
its `main` in the test's process (`call`)."""

import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = str(Path(sys.executable).with_name("keras-sam"))


def environment(extra=None, unset=()) -> dict:
    """The test's environment for a command: `$KERAS_BACKEND` defaults to
    jax (as in `test_cli.py`), `extra` added, `unset` removed."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if "KERAS_BACKEND" not in unset:
        env.setdefault("KERAS_BACKEND", "jax")
    env.update(extra or {})
    return env


def preexec(umask=None, max_file_size=None):
    """A `preexec_fn`: Ctrl-C raises KeyboardInterrupt in the child (a
    background test run may start with SIGINT ignored), then the umask and
    `RLIMIT_FSIZE` (writes beyond it fail with EFBIG, as on a full disk)."""

    def set_up():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if umask is not None:
            os.umask(umask)
        if max_file_size is not None:
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (max_file_size, max_file_size)
            )

    return set_up


def run(*args, timeout=300, env=None, unset=(), umask=None, fsize=None):
    """The console script with `args` (`python -c CODE` when the first
    argument is "-c"), run to completion."""
    argv = [sys.executable, *args] if args[0] == "-c" else [SCRIPT, *args]
    return subprocess.run(
        list(map(str, argv)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(env, unset),
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec(umask, fsize),
    )


def call(*args) -> subprocess.CompletedProcess:
    """`keras_sam.cli.main(args)` in this process, its stdout and stderr
    captured, as `run` gives them.

    What a command computes, writes and says is `main`'s: the console
    script adds only an immediate exit and the filter of the native
    libraries' log lines (tested with `run`, as is everything read when a
    process starts: `--backend`, the umask, signals). In this process the
    frameworks are imported already, which saves each command their
    import (seconds). The environment variables the command sets are
    restored afterwards.
    """
    from keras_sam import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    try:
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                status = cli.main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                status = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(
        args, status, stdout.getvalue(), stderr.getvalue()
    )


def start(*args, env=None):
    """The console script with `args`, running; stderr piped."""
    return subprocess.Popen(
        [SCRIPT, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment(env),
        preexec_fn=preexec(),
    )


def messages(stderr: str) -> list[str]:
    """The command's own lines on stderr ("keras-sam..."), without the
    frameworks' start-up chatter."""
    return [line for line in stderr.splitlines() if line.startswith("keras")]


def assert_fails(result, status: int, *fragments: str) -> str:
    """`result` exited with `status`, with no traceback and exactly one
    error line, which contains every fragment; return that line."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in messages(result.stderr) if "error:" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(*folders) -> dict:
    """Every file below `folders`: path -> bytes."""
    files = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files
