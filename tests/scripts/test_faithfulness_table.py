"""`scripts/faithfulness_table.py`: rows point at tests that exist, and the
table takes the worst comparison of each row's tests."""

import re
from pathlib import Path

import pytest

from tests import helpers

# End to end; `make test` runs it on one backend (see the Makefile).
pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
RTOL = 1e-5


@pytest.fixture(scope="module")
def script():
    return helpers.load_script("faithfulness_table")


def test_every_row_names_existing_tests(script):
    for row, file, tests, _ in script.ROWS:
        source = (ROOT / file).read_text()
        defined = set(re.findall(r"^def (test_\w+)", source, re.MULTILINE))
        assert set(tests) <= defined, (row, set(tests) - defined)


def test_table_takes_the_worst_of_each_row(script):
    decoder = "tests/layers/test_mask_decoder.py"
    predictor = "tests/inference/test_predictor.py"
    records = [
        {
            "nodeid": f"{decoder}::test_matches_official[a]",
            "what": "masks",
            "err": 1e-6,
            "rtol": RTOL,
        },
        {
            "nodeid": f"{decoder}::test_matches_official[b]",
            "what": "iou_pred",
            "err": 3e-6,
            "rtol": RTOL,
        },
        # Not a comparison with the official code: not counted.
        {
            "nodeid": f"{decoder}::test_keras_conventions",
            "what": "predict",
            "err": 9e-6,
            "rtol": RTOL,
        },
        {
            "nodeid": f"{predictor}::test_predict_matches_official[point]",
            "what": "low",
            "err": 2e-6,
            "rtol": RTOL,
        },
        {
            "nodeid": f"{predictor}::test_predict_matches_official[point]",
            "what": "scores",
            "err": 5e-5,
            "rtol": RTOL,
        },
    ]
    lines = script.table({"jax": records}).splitlines()
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")[1] for line in lines[2:]
    }
    assert rows["mask decoder (logits, IoU)"] == "3.0e-06"
    assert rows["predictor end to end: low-res logits"] == "2.0e-06"
    assert rows["predictor end to end: scores"] == "5.0e-05"
    assert rows["prompt encoder"] == "not run"
    # The tolerance column is the rtol the tests passed.
    assert lines[3].endswith("| 1e-5 |"), lines[3]
