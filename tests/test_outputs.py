"""Result TSV lines: the column-wise formatting must write exactly what Python's formatting writes."""

from __future__ import annotations

import numpy as np
import pytest

from userlens.understanding.outputs import _python_lines, format_lines


@pytest.mark.parametrize(
    "scores",
    [
        np.random.default_rng(0).random(5000).astype(np.float32),  # Run probabilities
        np.random.default_rng(1).random(5000) * 2 - 1,  # keyword cosines, negatives too
        np.round(np.random.default_rng(2).random(5000), 7),  # many ties at the 7th decimal
        np.array([0.0, 1.0, -0.0, 0.5e-6, -0.5e-6, 1.5e-6, 2.5e-6, 0.9999995, -1.0, 0.1234565] * 500),
    ],
)
def test_column_wise_lines_equal_python_formatting(scores):
    ids = [f"user{i}" for i in range(len(scores))]
    ids[3], ids[4], ids[5], ids[6], ids[7] = "=HYPERLINK()", "-1", "@cmd", "+x", "\tz"
    got = format_lines(ids, scores)
    assert got == _python_lines(ids, scores)
    lines = got.decode().splitlines()
    assert lines[3].startswith("'=") and lines[4].startswith("'-1\t") and lines[8].startswith("user8\t")


def test_scores_out_of_range_fall_back_to_python_formatting():
    scores = np.array([0.5, np.nan, 12.25, -np.inf])
    assert format_lines(["a", "b", "c", "d"], scores) == b"a\t0.500000\nb\tnan\nc\t12.250000\nd\t-inf\n"
