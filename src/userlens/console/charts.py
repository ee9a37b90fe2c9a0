"""Server-rendered SVG charts: axes, ticks, labels and a legend, no JavaScript and nothing fetched.

Each function returns SVG markup (escaped, safe to put in a template with |safe via Markup).
"""

from __future__ import annotations

import math
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#9ca3af", "#16a34a", "#f59e0b", "#db2777", "#7c3aed")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above value (an axis end that reads well)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp + 1e-12:
            return m * exp
    return 10 * exp


def pct(v: float, digits: int = 0) -> str:
    return f"{v * 100:.{digits}f}%"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}" {FONT}><title>{_e(title)}</title>' + "".join(body) + "</svg>"
    )


def _legend(names: list[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(f'<text x="{x + 14}" y="{y}">{_e(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def roc_chart(fpr: list[float], tpr: list[float], auc: float | None, title: str = "ROC curve") -> Markup:
    """The ROC curve on the unit square, with the chance diagonal."""
    W, H, ml, mr, mt, mb = 440, 400, 58, 18, 30, 48
    pw, ph = W - ml - mr, H - mt - mb

    def X(v):
        return ml + v * pw

    def Y(v):
        return mt + (1 - v) * ph

    body = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="600">{_e(title)}</text>']
    for i in range(6):
        v = i / 5
        body.append(f'<line x1="{X(v):.1f}" y1="{mt}" x2="{X(v):.1f}" y2="{mt + ph}" stroke="#e5e7eb"/>')
        body.append(f'<line x1="{ml}" y1="{Y(v):.1f}" x2="{ml + pw}" y2="{Y(v):.1f}" stroke="#e5e7eb"/>')
        body.append(f'<text x="{X(v):.1f}" y="{mt + ph + 16}" text-anchor="middle">{v:.1f}</text>')
        body.append(f'<text x="{ml - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    body.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#6b7280"/>')
    body.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#9ca3af" stroke-dasharray="5 4"/>')
    pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(fpr, tpr))
    if pts:
        area = f"{X(fpr[0]):.1f},{Y(0):.1f} {pts} {X(fpr[-1]):.1f},{Y(0):.1f}"
        body.append(f'<polygon points="{area}" fill="{PALETTE[0]}" fill-opacity="0.08"/>')
        body.append(f'<polyline class="roc" points="{pts}" fill="none" stroke="{PALETTE[0]}" stroke-width="2.2"/>')
    body.append(f'<text x="{ml + pw / 2}" y="{H - 8}" text-anchor="middle">False positive rate</text>')
    body.append(f'<text transform="translate(16 {mt + ph / 2}) rotate(-90)" text-anchor="middle">True positive rate</text>')
    label = f"Task model (AUC {auc:.3f})" if auc is not None else "Task model"
    body += _legend([label], ml + pw - 200, mt + ph - 36)
    body.append(f'<line x1="{ml + pw - 200}" y1="{mt + ph - 14}" x2="{ml + pw - 190}" y2="{mt + ph - 14}" stroke="#9ca3af" stroke-dasharray="3 2"/>')
    body.append(f'<text x="{ml + pw - 186}" y="{mt + ph - 10}">chance</text>')
    return _svg(W, H, f"{title}: true positive rate against false positive rate", body)


def column_chart(categories: list[str], series: list[tuple[str, list[float]]], *, title: str, y_label: str, share: bool = False, width: int = 520) -> Markup:
    """Grouped vertical columns: one group per category, one column per series (values >= 0).
    `share`: values are fractions, shown as percentages."""
    H, ml, mr, mt, mb = 300, 60, 16, 48, 52
    W = width
    pw, ph = W - ml - mr, H - mt - mb
    top = nice_max(max([v for _, vals in series for v in vals] + [0]) * (1.08 if share else 1.0))
    if not share:
        top = max(top, 5)
    fmt = (lambda v: pct(v)) if share else (lambda v: f"{v:,.0f}" if v == int(v) else f"{v:,.1f}")
    body = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="600">{_e(title)}</text>']
    body += _legend([n for n, _ in series], ml, 38)
    for i in range(6):
        v = top * i / 5
        y = mt + ph - ph * i / 5
        body.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(fmt(v))}</text>')
    n = max(1, len(categories))
    group_w = pw / n
    bar_w = min(36, group_w * 0.8 / max(1, len(series)))
    for ci, cat in enumerate(categories):
        gx = ml + ci * group_w + (group_w - bar_w * len(series)) / 2
        for si, (name, vals) in enumerate(series):
            v = vals[ci]
            h = ph * v / top
            x = gx + si * bar_w
            body.append(
                f'<rect x="{x:.1f}" y="{mt + ph - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                f"<title>{_e(name)} · {_e(cat)}: {_e(fmt(v) if not share else pct(v, 1))}</title></rect>"
            )
            if len(series) * n <= 16:
                body.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{mt + ph - h - 3:.1f}" text-anchor="middle" font-size="10">{_e(pct(v, 1) if share else fmt(v))}</text>')
        body.append(f'<text x="{ml + ci * group_w + group_w / 2:.1f}" y="{mt + ph + 16}" text-anchor="middle">{_e(cat)}</text>')
    body.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#6b7280"/>')
    body.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#6b7280"/>')
    body.append(f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>')
    return _svg(W, H, title, body)


def bar_chart(labels: list[str], series: list[tuple[str, list[float]]], *, title: str, x_label: str, share: bool = False, notes: list[str] | None = None, value_format=None, width: int = 680) -> Markup:
    """Grouped horizontal bars: one row per label (long labels are shortened, full in a tooltip),
    one bar per series, and an optional note at the end of each row (e.g. the lift)."""
    row_h = 12 * len(series) + 10
    ml, mr, mt, mb = 230, 130 if notes else 20, 48, 44
    W = width
    pw = W - ml - mr
    ph = row_h * max(1, len(labels))
    H = mt + ph + mb
    top = nice_max(max([v for _, vals in series for v in vals] + [0]))
    fmt = value_format or ((lambda v: pct(v)) if share else (lambda v: f"{v:,.0f}"))
    body = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="600">{_e(title)}</text>']
    body += _legend([n for n, _ in series], ml, 38)
    for i in range(6):
        v = top * i / 5
        x = ml + pw * i / 5
        body.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#e5e7eb"/>')
        body.append(f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">{_e(fmt(v))}</text>')
    for ri, label in enumerate(labels):
        y0 = mt + ri * row_h + 5
        short = label if len(label) <= 28 else label[:27] + "…"
        body.append(f'<text x="{ml - 6}" y="{y0 + 6 * len(series) + 4:.1f}" text-anchor="end"><title>{_e(label)}</title>{_e(short)}</text>')
        for si, (name, vals) in enumerate(series):
            v = vals[ri]
            w = pw * v / top
            body.append(
                f'<rect x="{ml}" y="{y0 + si * 12:.1f}" width="{w:.1f}" height="11" fill="{PALETTE[si % len(PALETTE)]}">'
                f"<title>{_e(name)} · {_e(label)}: {_e(pct(v, 1) if share else fmt(v))}</title></rect>"
            )
        if notes:
            body.append(f'<text x="{ml + pw + 8}" y="{y0 + 6 * len(series) + 4:.1f}">{_e(notes[ri])}</text>')
    body.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#6b7280"/>')
    body.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#6b7280"/>')
    body.append(f'<text x="{ml + pw / 2}" y="{H - 8}" text-anchor="middle">{_e(x_label)}</text>')
    return _svg(W, H, title, body)
