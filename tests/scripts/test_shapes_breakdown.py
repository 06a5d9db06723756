"""`scripts/shapes_breakdown.py`: the README's per-area / per-piece tables."""

import numpy as np
import pytest

from tests import helpers

# End to end; `make test` runs it on one backend (see the Makefile).
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def breakdown():
    return helpers.load_script("shapes_breakdown")


def test_visible_pieces(breakdown):
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[0, 2:4] = mask[5, 5] = True
    mask[1, 1] = True  # touches (0, 0) by a corner only: its own piece
    assert breakdown.visible_pieces(mask) == 4


def test_tables_bin_and_average(breakdown):
    objects = [
        dict(area=a, pieces=p, point_iou=c, point_best_iou=b, box_iou=x)
        for a, p, c, b, x in [
            (100, 1, 0.2, 0.4, 0.5),
            (499, 3, 0.4, 0.6, 0.7),
            (500, 2, 0.9, 0.9, 0.8),
            (9000, 5, 1.0, 1.0, 0.9),
        ]
    ]
    text = breakdown.tables(objects)
    assert "| < 500 | 2 | 0.300 | 0.500 | 0.600 |" in text
    assert "| 500-1,000 | 1 | 0.900 | 0.900 | 0.800 |" in text
    assert "| >= 8,000 | 1 | 1.000 | 1.000 | 0.900 |" in text
    assert "1,000-2,000" not in text  # empty bins are left out
    assert "| 1 | 1 | 0.200 | 0.500 |" in text
    assert "| 2 | 1 | 0.900 | 0.800 |" in text
    assert "| 3 or more | 2 | 0.700 | 0.800 |" in text
    assert "all: 4 objects, click 0.625, best of 3 0.725, box 0.725" in text


def test_correction_click(breakdown):
    truth = np.zeros((9, 9), bool)
    truth[1:8, 1:8] = True
    missed = truth.copy()
    missed[1:8, 4:8] = False  # right part missed: click there, label 1
    point, label = breakdown.correction_click(missed, truth)
    assert label == 1 and 4 <= point[0] <= 7 and 1 <= point[1] <= 7
    spilled = truth.copy()
    spilled[0, :] = spilled[:, 0] = spilled[8, :] = True  # false pixels
    point, label = breakdown.correction_click(spilled, truth)
    assert label == 0 and not truth[int(point[1]), int(point[0])]
    assert breakdown.correction_click(truth, truth) is None
