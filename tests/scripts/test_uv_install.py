"""scripts/uv_install.py: pip's package sources passed on to uv."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "uv_install.py"


def _module():
    spec = importlib.util.spec_from_file_location("uv_install", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sources_from_pip_config_list():
    listed = "\n".join(
        [
            ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",
            ":env:.default-timeout='180'",
            ":env:.find-links='/opt/wheels'",
            "global.constraint='/etc/xdg/pip/constraints.txt'",
            "global.extra-index-url='file:///opt/pypi/simple "
            "file:///opt/pypi-more/simple'",
            "global.find-links='/opt/wheels'",
            "user.index-url='https://mirror.example/simple'",
            "not a setting",
        ]
    )
    options, cert = _module().pip_sources(listed)
    assert options == [
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
        "--extra-index-url",
        "file:///opt/pypi/simple",
        "--extra-index-url",
        "file:///opt/pypi-more/simple",
        "--index-url",
        "https://mirror.example/simple",
    ]
    assert cert == "/etc/ssl/certs/ca-certificates.crt"


def test_no_configuration_means_no_options():
    assert _module().pip_sources("") == ([], None)
