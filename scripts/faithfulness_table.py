"""The README's faithfulness table: worst relative errors against the official
SAM, measured by the parity tests themselves.

Usage (from the repository root, test extras installed):

    python scripts/faithfulness_table.py                # all three backends
    python scripts/faithfulness_table.py --backends jax

For each backend it runs the parity test files in a subprocess with this
module loaded as a pytest plugin. The plugin wraps `tests.helpers.
assert_close` (every parity test compares through it) and logs each
comparison's `max|ours - official| / max|official|` and tolerance with
its test; the
tests pass or fail as usual. The table takes, per row, the maximum over the
comparisons of the tests listed in `ROWS`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("jax", "torch", "tensorflow")
_LOG = "KERAS_SAM_FAITHFULNESS_LOG"

# (row, test file, test names, `what` labels or None for all); the
# tolerance column is the `rtol` the tests themselves passed.
ROWS = (
    (
        "prompt encoder",
        "tests/layers/test_prompt_encoder.py",
        ("test_matches_official",),
        None,
    ),
    (
        "mask decoder (logits, IoU)",
        "tests/layers/test_mask_decoder.py",
        (
            "test_matches_official",
            "test_output_selection_matches_official_forward",
            "test_end_to_end_with_prompt_encoder",
        ),
        None,
    ),
    (
        "image encoder (small configs)",
        "tests/models/test_image_encoder.py",
        ("test_matches_official_image_encoder",),
        None,
    ),
    (
        "predictor end to end: image embedding",
        "tests/inference/test_predictor.py",
        ("test_image_embedding_matches_official",),
        None,
    ),
    (
        "predictor end to end: low-res logits",
        "tests/inference/test_predictor.py",
        (
            "test_predict_matches_official",
            "test_mask_input_from_a_previous_prediction",
            "test_predict_batch_of_boxes_matches_official",
        ),
        ("low",),
    ),
    (
        "predictor end to end: scores",
        "tests/inference/test_predictor.py",
        (
            "test_predict_matches_official",
            "test_mask_input_from_a_previous_prediction",
            "test_predict_batch_of_boxes_matches_official",
        ),
        ("scores",),
    ),
)


# -- pytest plugin (loaded with `-p faithfulness_table`) ---------------------

_current = {"nodeid": None}


def pytest_runtest_setup(item):
    _current["nodeid"] = item.nodeid


def pytest_configure(config):
    path = os.environ.get(_LOG)
    if not path:
        return
    from tests import helpers

    original = helpers.assert_close

    def assert_close(ours, ref, rtol, what=""):
        err = original(ours, ref, rtol, what)
        with open(path, "a") as f:
            record = {
                "nodeid": _current["nodeid"],
                "what": what,
                "err": err,
                "rtol": rtol,
            }
            f.write(json.dumps(record) + "\n")
        return err

    helpers.assert_close = assert_close


# -- driver -------------------------------------------------------------------


def measure(backend: str) -> list[dict]:
    """Run the parity tests on `backend`; the logged comparisons."""
    files = sorted({row[1] for row in ROWS})
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        env = dict(os.environ, KERAS_BACKEND=backend, **{_LOG: str(log)})
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")]
        )
        command = [sys.executable, "-m", "pytest", "-q", "-p"]
        command += ["faithfulness_table", *files]
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        return [json.loads(line) for line in log.read_text().splitlines()]


def _row_records(records, file, tests, whats) -> list[dict]:
    return [
        r
        for r in records
        if r["nodeid"].split("::")[0] == file
        and r["nodeid"].split("::")[1].split("[")[0] in tests
        and (whats is None or r["what"] in whats)
    ]


def table(results: dict[str, list[dict]]) -> str:
    backends = list(results)
    lines = [
        "| | " + " | ".join(backends) + " | tolerance |",
        "|---" * (len(backends) + 2) + "|",
    ]
    for row, file, tests, whats in ROWS:
        cells, rtols = [], set()
        for backend in backends:
            found = _row_records(results[backend], file, tests, whats)
            rtols |= {r["rtol"] for r in found}
            worst = max((r["err"] for r in found), default=None)
            cells.append("not run" if worst is None else f"{worst:.1e}")
        tolerance = " / ".join(
            f"{t:.0e}".replace("e-0", "e-") for t in sorted(rtols)
        )
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {tolerance} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    args = parser.parse_args(argv)
    results = {b: measure(b) for b in args.backends}
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
