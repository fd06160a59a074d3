"""A self-contained HTML report: the fleet's certificate-expiry histogram before and after.

No JavaScript and no external assets: two inline SVG bar charts (days until expiry,
one bar per day) and the run's summary table, so the file opens anywhere.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any


def expiry_histogram(not_afters: Iterable[datetime], now: datetime) -> Counter[int]:
    """Devices per whole day until expiry (negative: already expired)."""
    return Counter(math.floor((na - now).total_seconds() / 86400) for na in not_afters)


def _svg(title: str, counts: Counter[int], lo: int, hi: int, colour: str) -> str:
    width, height, pad = 720, 220, 36
    days = list(range(lo, hi + 1))
    peak = max([*counts.values(), 1])
    bar_w = (width - 2 * pad) / max(len(days), 1)
    bars = []
    for i, day in enumerate(days):
        n = counts.get(day, 0)
        if not n:
            continue
        h = (height - 2 * pad) * n / peak
        x = pad + i * bar_w
        y = height - pad - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{day} days: {n} devices</title></rect>'
        )
    ticks = []
    step = max(1, len(days) // 10)
    for i, day in enumerate(days):
        if i % step == 0:
            x = pad + i * bar_w + bar_w / 2
            ticks.append(
                f'<text x="{x:.1f}" y="{height - pad + 14}" font-size="10" '
                f'text-anchor="middle">{day}</text>'
            )
    return (
        f'<figure><figcaption>{html.escape(title)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#444"/>'
        f'<text x="{pad}" y="{pad - 10}" font-size="11">peak {peak} devices/day</text>'
        f'{"".join(bars)}{"".join(ticks)}'
        f'<text x="{width / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
        f"days until expiry</text></svg></figure>"
    )


def render_report(
    *,
    before: Iterable[datetime],
    before_at: datetime,
    after: Iterable[datetime],
    after_at: datetime,
    summary: Mapping[str, Any],
    title: str = "certroll fleet report",
) -> str:
    h_before = expiry_histogram(before, before_at)
    h_after = expiry_histogram(after, after_at)
    keys = [*h_before, *h_after] or [0]
    lo, hi = min(min(keys), 0), max(keys)
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}
table{{border-collapse:collapse}}th,td{{padding:.2rem .8rem;border-bottom:1px solid #ddd;
text-align:left}}figure{{margin:1rem 0}}figcaption{{font-weight:600}}</style></head>
<body><h1>{html.escape(title)}</h1>
{_svg(f"Before: {sum(h_before.values())} devices at {before_at:%Y-%m-%d %H:%M} UTC",
      h_before, lo, hi, "#c0392b")}
{_svg(f"After: {sum(h_after.values())} devices at {after_at:%Y-%m-%d %H:%M} UTC",
      h_after, lo, hi, "#27ae60")}
<h2>Summary</h2><table>{rows}</table></body></html>
"""
