"""The console's plots, drawn here as inline SVG: no chart library, no script.

Each plot says in words what it draws (labels with the numbers, a ``<title>`` and an
``aria-label``), so it reads without colour and to a screen reader. Shapes carry
classes, never inline styles: the console's Content-Security-Policy allows only its
own stylesheet. Names in labels are tenants' or operators' text: every one goes
through :func:`markupsafe.escape` before it joins the markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

from qhpc.web.views import AccountRow

#: drawing width of every plot (the SVG scales to its box)
WIDTH = 640
_LABEL = 150  # room for the label column
_ROW = 34


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def utilisation_timeline(series: dict[str, list[float]], bucket_seconds: float) -> Markup:
    """One strip of bars per resource: its busy fraction per bucket, oldest left."""
    if not series:
        return Markup('<p class="empty">No resources.</p>')
    minutes = bucket_seconds * max(len(v) for v in series.values()) / 60
    height = _ROW * len(series) + 24
    plot = WIDTH - _LABEL - 70
    parts = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="QPU utilisation over the last {minutes:g} minutes">',
        f"<title>QPU utilisation over the last {minutes:g} minutes</title>",
    ]
    for row, (name, values) in enumerate(series.items()):
        y = row * _ROW + 4
        average = sum(map(_clamp, values)) / len(values) if values else 0.0
        label = escape(name)
        parts.append(f'<text class="label" x="0" y="{y + 20}">{label}</text>')
        parts.append(
            f'<rect class="track" x="{_LABEL}" y="{y}" width="{plot}" height="{_ROW - 8}"/>'
        )
        width = plot / len(values) if values else plot
        for index, value in enumerate(values):
            tall = (_ROW - 8) * _clamp(value)
            if tall <= 0:
                continue
            x = _LABEL + index * width
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y + _ROW - 8 - tall:.1f}" '
                f'width="{max(width - 1, 1):.1f}" height="{tall:.1f}">'
                f"<title>{label}: {_percent(_clamp(value))} busy</title></rect>"
            )
        parts.append(
            f'<text class="value" x="{WIDTH - 64}" y="{y + 20}">{_percent(average)} busy</text>'
        )
    parts.append(
        f'<text class="axis" x="{_LABEL}" y="{height - 4}">{minutes:g} min ago</text>'
        f'<text class="axis" x="{_LABEL + plot}" y="{height - 4}" text-anchor="end">now</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def usage_against_share(rows: Sequence[AccountRow]) -> Markup:
    """Per account, its part of all shares (outlined bar) and of all usage (filled bar)."""
    if not rows:
        return Markup('<p class="empty">No accounts to show.</p>')
    height = _ROW * 2 * len(rows) + 8
    plot = WIDTH - _LABEL - 130
    parts = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {height}" role="img" '
        'aria-label="QPU usage against fair share per account">',
        "<title>QPU usage against fair share per account</title>",
    ]
    for row, account in enumerate(rows):
        y = row * _ROW * 2 + 4
        name = escape(account.account)
        parts.append(f'<text class="label" x="0" y="{y + 16}">{name}</text>')
        for offset, kind, fraction in (
            (0, "share", account.share_fraction),
            (_ROW - 6, "usage", account.usage_fraction),
        ):
            value = _clamp(fraction)
            parts.append(
                f'<rect class="track" x="{_LABEL}" y="{y + offset}" width="{plot}" height="20"/>'
                f'<rect class="{kind}" x="{_LABEL}" y="{y + offset}" '
                f'width="{plot * value:.1f}" height="20"/>'
                f'<text class="value" x="{_LABEL + plot + 8}" y="{y + offset + 15}">'
                f"{kind} {_percent(value)}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
