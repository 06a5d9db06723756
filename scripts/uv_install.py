"""Install packages into this Python's environment with uv, as pip would.

    python scripts/uv_install.py -e ".[jax,tensorflow,torch,test]"

`make test` installs the suite's packages this way: uv (from the package
index) installs the same packages as pip (on the CI machine, the same
`pip freeze`), with their bytecode compiled as pip does, in a fraction of
pip's time. uv reads none of pip's configuration, so the package sources
pip is configured with (its config files and `PIP_*` variables:
`find-links`, `index-url`, `extra-index-url`, `constraint`, `cert`) are
passed on, with pip's rule of taking the best version from any index. If
uv cannot be installed or fails, pip installs the packages instead: the
result is the same, only slower.
"""

import os
import shlex
import subprocess
import sys

# pip settings that choose where packages come from, as uv options.
_OPTIONS = {
    "find-links": "--find-links",
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "constraint": "--constraint",
}


def pip_sources(config_list: str) -> tuple[list[str], str | None]:
    """uv options for the sources in `pip config list` output, and the CA
    bundle pip is configured with (None if none).

    Each line reads `SCOPE.NAME='VALUE'`; a value may hold several
    whitespace-separated entries (as pip's `extra-index-url` does). An
    entry given twice (in a file and in the environment) is passed once.
    """
    options, seen, cert = [], set(), None
    for line in config_list.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rsplit(".", 1)[-1]
        entries = " ".join(shlex.split(value)).split()
        if name == "cert" and entries:
            cert = entries[0]
        flag = _OPTIONS.get(name)
        for entry in entries if flag else ():
            if (flag, entry) not in seen:
                seen.add((flag, entry))
                options += [flag, entry]
    return options, cert


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    listed = subprocess.run(
        _pip("config", "list"), capture_output=True, text=True
    )
    options, cert = pip_sources(listed.stdout if listed.returncode == 0 else "")
    env = dict(os.environ)
    if cert:
        env["SSL_CERT_FILE"] = cert
    if subprocess.run(_pip("install", "-q", "uv")).returncode == 0:
        uv = [
            sys.executable,
            "-m",
            "uv",
            "pip",
            "install",
            "--python",
            sys.executable,
            "--index-strategy",
            "unsafe-best-match",
            # As pip does: compiled once here, not on every import by every
            # process (with PYTHONDONTWRITEBYTECODE set, as on the CI
            # machine, imports never write them).
            "--compile-bytecode",
            *options,
            *argv,
        ]
        if subprocess.run(uv, env=env).returncode == 0:
            return 0
        print("uv failed; installing with pip instead", file=sys.stderr)
    return subprocess.run(_pip("install", *argv)).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
