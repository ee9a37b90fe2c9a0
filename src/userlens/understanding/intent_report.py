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

The report is built from summaries (`PanelSummary`) of runs of consecutive panel users: how many
users hold each value, and the run's own top group-size users by score (panel order kept). Merging
two adjacent summaries keeps the top of their union, so the merged candidates of the whole panel are
exactly the group, and the counts are integers: the report (every float summed in panel order over
the same members) is identical however the panel was cut into chunks and wherever they ran.

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


def group_size(n: int, share: float = GROUP_SHARE) -> int:
    """How many panel users the resembling group holds (at least one)."""
    return max(1, math.ceil(share * n))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, ties kept in order, returned in order."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def group_weights(scores: np.ndarray, share: float = GROUP_SHARE) -> np.ndarray:
    """Each panel user's weight in the resembling group (0 outside it)."""
    members = _top(scores, group_size(len(scores), share))
    w = np.zeros(len(scores), dtype=np.float64)
    w[members] = _weights(scores[members])
    return w


def _weights(member_scores: np.ndarray) -> np.ndarray:
    w = np.asarray(member_scores, dtype=np.float64).copy()
    if w.sum() <= 0:
        w[:] = 1.0
    return w


def _take(data: PanelScores, idx: np.ndarray) -> PanelScores:
    """The users at `idx` (in that order), their interests included."""
    counts = data.interest_counts[idx]
    starts = (np.cumsum(data.interest_counts) - data.interest_counts)[idx]
    # Position of each selected interest in the flat codes: its user's start + its rank there.
    pos = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    return PanelScores(data.scores[idx], data.gender[idx], data.age_group[idx], counts, data.interest_codes[pos])


def _concat(a: PanelScores, b: PanelScores) -> PanelScores:
    return PanelScores(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("scores", "gender", "age_group", "interest_counts", "interest_codes")))


@dataclass
class PanelSummary:
    """What the report needs of a run of consecutive panel users (one block, one part, the panel).

    `candidates`: the run's own top `k` users by score (k: the whole panel's group size), in panel
    order; every group member of the panel is among the candidates of its run. Small and picklable:
    what an executor chunk returns."""

    users: int
    counts: dict[str, np.ndarray]  # section -> users holding each code (int64)
    candidates: PanelScores
    k: int


def summarize(data: PanelScores, sizes: dict[str, int], k: int) -> PanelSummary:
    """The summary of `data` (consecutive panel users); `sizes`: codes per section."""
    counts = {
        "gender": np.bincount(data.gender, minlength=sizes["gender"]).astype(np.int64),
        "age_group": np.bincount(data.age_group, minlength=sizes["age_group"]).astype(np.int64),
        "interest": np.bincount(data.interest_codes, minlength=sizes["interest"]).astype(np.int64),
    }
    return PanelSummary(len(data.scores), counts, _take(data, _top(data.scores, k)), k)


def merge(a: PanelSummary, b: PanelSummary) -> PanelSummary:
    """The summary of a's users followed by b's: counts add up, candidates are the top of both."""
    both = _concat(a.candidates, b.candidates)
    counts = {s: a.counts[s] + b.counts[s] for s in a.counts}
    return PanelSummary(a.users + b.users, counts, _take(both, _top(both.scores, a.k)), a.k)


def _rows(keys: list[str], group: np.ndarray, panel: np.ndarray) -> list[dict]:
    out = []
    for code, key in enumerate(keys):
        if panel[code] <= 0:
            continue
        g, p = float(group[code]), float(panel[code])
        out.append({"key": key, "group_share": round(g, 6), "panel_share": round(p, 6), "lift": round(g / p, 4)})
    return out


def report_from_summary(summary: PanelSummary, categories: dict[str, list[str]]) -> dict:
    """The report's JSON form, from the summary of the whole panel."""
    n = summary.users
    if summary.k != group_size(n):
        raise ValueError(f"a summary of {n} users has {summary.k} candidates, the group holds {group_size(n)}")
    group_data = summary.candidates  # exactly the group, in panel order
    w = _weights(group_data.scores)
    total = w.sum()
    sections: dict[str, list[dict]] = {}
    for section, codes in (("gender", group_data.gender), ("age_group", group_data.age_group)):
        k = len(categories[section])
        group = np.bincount(codes, weights=w, minlength=k) / total
        panel = summary.counts[section] / n
        sections[section] = sorted(_rows(categories[section], group, panel), key=lambda r: r["key"])
    k = len(categories["interest"])
    holder = np.repeat(np.arange(len(w)), group_data.interest_counts)
    counts = summary.counts["interest"]
    group = np.bincount(group_data.interest_codes, weights=w[holder], minlength=k) / total
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
        "group_min_score": round(float(group_data.scores[members].min()), 6),
        "group_mean_score": round(float(group_data.scores[members].mean()), 6),
        **sections,
    }


def build_report(data: PanelScores, categories: dict[str, list[str]]) -> dict:
    """The report's JSON form from every panel user's scores and codes at once."""
    sizes = {s: len(categories[s]) for s in ("gender", "age_group", "interest")}
    return report_from_summary(summarize(data, sizes, group_size(len(data.scores))), categories)


def render_tsv(report: dict) -> bytes:
    lines = ["\t".join(COLUMNS)]
    for section in ("gender", "age_group", "interest"):
        for r in report[section]:
            lines.append(f"{section}\t{safe_cell(r['key'])}\t{r['group_share']:.6f}\t{r['panel_share']:.6f}\t{r['lift']:.4f}")
    return ("\n".join(lines) + "\n").encode("utf-8")
