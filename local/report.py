"""Self-contained HTML reports (no JavaScript, no external assets: inline SVG and CSS,
so the file opens anywhere).

- :func:`render_report`: a demo run's certificate-expiry histogram before and after the
  rotation, and the run's summary table (``certroll demo --report``);
- :func:`render_fleet_report`: the fleet as any ledger holds it (``certroll report``):
  the expiry histogram, devices by status, the devices that need attention with their
  reasons, certificates per issuing CA, CA expiry, recent disallows and reconciles.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from shared.domain.fleet import STATUSES, FleetSnapshot


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
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#444"/>'
        f'<text x="{pad}" y="{pad - 10}" font-size="11">peak {peak} devices/day</text>'
        f"{''.join(bars)}{''.join(ticks)}"
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
{
        _svg(
            f"Before: {sum(h_before.values())} devices at {before_at:%Y-%m-%d %H:%M} UTC",
            h_before,
            lo,
            hi,
            "#c0392b",
        )
    }
{
        _svg(
            f"After: {sum(h_after.values())} devices at {after_at:%Y-%m-%d %H:%M} UTC",
            h_after,
            lo,
            hi,
            "#27ae60",
        )
    }
<h2>Summary</h2><table>{rows}</table></body></html>
"""


# --------------------------------------------------------------------------- fleet report

_STATUS_COLOURS = {
    "ok": "#27ae60",
    "late": "#e67e22",
    "stuck": "#d35400",
    "overdue": "#c0392b",
    "failed": "#8e44ad",
    "disallowed": "#7f8c8d",
}
_MAX_PROBLEM_ROWS = 500


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    if not body:
        return f'<p class="empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M} UTC"
    return str(value)


def _detail(event: Any, *names: str) -> str:
    return ", ".join(
        f"{n}: {event.detail[n]}" for n in names if event.detail.get(n) not in (None, "", [])
    )


def render_fleet_report(
    snap: FleetSnapshot, *, source: str, title: str = "certroll fleet report"
) -> str:
    """One self-contained HTML page (inline CSS and SVG, no script, no external asset)
    from a :class:`~shared.domain.fleet.FleetSnapshot`."""
    days = list(snap.expiry_days) or [0]
    lo, hi = min(min(days), 0), max(max(days), 1)
    histogram = _svg(
        f"Days until the current certificate expires: {sum(snap.expiry_days.values())} devices",
        snap.expiry_days,
        lo,
        hi,
        "#2c7fb8",
    )
    chips = "".join(
        f'<li style="border-color:{_STATUS_COLOURS[s]}"><span>{html.escape(s)}</span>'
        f"<b>{snap.statuses.get(s, 0)}</b></li>"
        for s in STATUSES
    )
    problems = snap.problems[:_MAX_PROBLEM_ROWS]
    more = len(snap.problems) - len(problems)
    problem_table = _table(
        ("device", "status", "state", "reason", "since"),
        ((p.device_id, p.status, p.state, p.reason, p.since) for p in problems),
        "No device is overdue, late, stuck, failed or disallowed.",
    ) + (f"<p>… and {more} more.</p>" if more > 0 else "")
    statuses = sorted({s for counts in snap.certificates_by_issuer.values() for s in counts})
    issuers = _table(
        ("issuing key", *statuses, "total"),
        (
            (key, *(counts.get(s, 0) for s in statuses), sum(counts.values()))
            for key, counts in sorted(snap.certificates_by_issuer.items())
        ),
        "The ledger holds no certificate.",
    )
    ca = _table(
        ("role", "subject", "not after", "days left"),
        ((c.role, c.subject, c.not_after, c.days_left) for c in snap.ca),
        "The CA certificates were not available to this report.",
    )
    in_flight = _table(
        ("trigger", "rotations running"),
        sorted(snap.in_flight.items()),
        "No rotation is running.",
    )
    disallows = _table(
        ("at", "device", "actor", "outcome", "detail"),
        (
            (e.at, e.device_id, e.actor, e.outcome, _detail(e, "reason", "revoked"))
            for e in snap.recent_disallows
        ),
        "No disallow in the recent audit log.",
    )
    reconciles = _table(
        ("at", "device", "outcome", "detail"),
        (
            (e.at, e.device_id, e.outcome, _detail(e, "result", "code", "serial", "changed"))
            for e in snap.recent_reconciles
        ),
        "No reconcile in the recent audit log.",
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}}
table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}th,td{{padding:.2rem .8rem;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}
figure{{margin:1rem 0}}figcaption{{font-weight:600}}.empty{{color:#666}}
ul.status{{display:flex;gap:.8rem;padding:0;list-style:none;flex-wrap:wrap}}
ul.status li{{border-left:.4rem solid;padding:.3rem .8rem;background:#fafafa}}
ul.status span{{display:block;font-size:.8rem;color:#555}}ul.status b{{font-size:1.4rem}}
</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(source)} at {snap.at:%Y-%m-%d %H:%M} UTC: {snap.devices} devices,
{snap.certificates} certificates.</p>
<h2>Devices by status</h2><ul class="status">{chips}</ul>
{histogram}
<h2>Devices that need attention</h2>{problem_table}
<h2>Certificates per issuing CA</h2>{issuers}
<h2>CA certificates</h2>{ca}
<h2>Rotations running</h2>{in_flight}
<p>Devices on the current issuing key: {snap.on_current_key}; on another key:
{snap.on_other_key}.</p>
<h2>Recent disallows</h2>{disallows}
<h2>Recent reconciles</h2>{reconciles}
</body></html>
"""
