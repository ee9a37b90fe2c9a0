"""The Shopping Intent report: who in the panel resembles a Task's target group, and how they differ.

The resembling group is the top GROUP_SHARE (10%) of the panel by the Task's score (the probability
of label 1), at least one person; ties at the cut keep panel order. Each member counts with its
score as weight, so the people the Task is surest about weigh most (when every member scores 0,
they count equally). A fixed share rather than a score threshold keeps profiles of different Tasks
comparable: a Task's probabilities follow the base rate of its own answers, which says nothing
about the panel.

For every value of a section:
  group_share = (sum of the weights of group members with the value) / (sum of all members' weights)
  panel_share = (panel users with the value) / (panel users)
  lift        = group_share / panel_share (above 1: more common among the resembling people)
`gender` and `age_group` list every value (shares sum to 1), sorted by value. `interest` shares are
the share of people holding the interest (a person may hold several, so they do not sum to 1); it
lists the TOP_INTERESTS interests with the highest lift among those held by at least
max(MIN_INTEREST_USERS, 1% of the panel) panel users (rarer ones give lifts that are mostly noise),
ties broken by group_share, then by name.

The TSV has the header `section<TAB>key<TAB>group_share<TAB>panel_share<TAB>lift` and one row per
(section, key); shares have 6 decimals and lifts 4, as in the JSON form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from userlens.understanding.outputs import safe_cell

GROUP_SHARE = 0.10
TOP_INTERESTS = 20
MIN_INTEREST_USERS = 5
COLUMNS = ("section", "key", "group_share", "panel_share", "lift")
GROUP_RULE = f"top {GROUP_SHARE:.0%} of the panel by Task score, each member weighted by its score"


@dataclass
class PanelScores:
    """Scores and attribute codes of every panel user, in one order."""

    scores: np.ndarray
    gender: np.ndarray
    age_group: np.ndarray
    interest_counts: np.ndarray
    interest_codes: np.ndarray


def group_weights(scores: np.ndarray, share: float = GROUP_SHARE) -> np.ndarray:
    """Each panel user's weight in the resembling group (0 outside it)."""
    n = len(scores)
    k = max(1, math.ceil(share * n))
    members = np.argsort(-scores, kind="stable")[:k]
    w = np.zeros(n, dtype=np.float64)
    w[members] = scores[members]
    if w.sum() <= 0:
        w[members] = 1.0
    return w


def _rows(keys: list[str], group: np.ndarray, panel: np.ndarray) -> list[dict]:
    out = []
    for code, key in enumerate(keys):
        if panel[code] <= 0:
            continue
        g, p = float(group[code]), float(panel[code])
        out.append({"key": key, "group_share": round(g, 6), "panel_share": round(p, 6), "lift": round(g / p, 4)})
    return out


def build_report(data: PanelScores, categories: dict[str, list[str]]) -> dict:
    """The report's JSON form: group facts and the three sections."""
    n = len(data.scores)
    w = group_weights(data.scores)
    total = w.sum()
    sections: dict[str, list[dict]] = {}
    for section, codes in (("gender", data.gender), ("age_group", data.age_group)):
        k = len(categories[section])
        group = np.bincount(codes, weights=w, minlength=k) / total
        panel = np.bincount(codes, minlength=k) / n
        sections[section] = sorted(_rows(categories[section], group, panel), key=lambda r: r["key"])
    k = len(categories["interest"])
    holder = np.repeat(np.arange(n), data.interest_counts)
    counts = np.bincount(data.interest_codes, minlength=k)
    group = np.bincount(data.interest_codes, weights=w[holder], minlength=k) / total
    rows = _rows(categories["interest"], group, counts / n)
    support = max(MIN_INTEREST_USERS, math.ceil(0.01 * n))
    keep = {categories["interest"][c] for c in range(k) if counts[c] >= support}
    rows = [r for r in rows if r["key"] in keep]
    rows.sort(key=lambda r: (-r["lift"], -r["group_share"], r["key"]))
    sections["interest"] = rows[:TOP_INTERESTS]
    members = w > 0
    return {
        "group_rule": GROUP_RULE,
        "panel_size": n,
        "group_size": int(members.sum()),
        "group_min_score": round(float(data.scores[members].min()), 6),
        "group_mean_score": round(float(data.scores[members].mean()), 6),
        **sections,
    }


def render_tsv(report: dict) -> bytes:
    lines = ["\t".join(COLUMNS)]
    for section in ("gender", "age_group", "interest"):
        for r in report[section]:
            lines.append(f"{section}\t{safe_cell(r['key'])}\t{r['group_share']:.6f}\t{r['panel_share']:.6f}\t{r['lift']:.4f}")
    return ("\n".join(lines) + "\n").encode("utf-8")
