"""A picture of one scenario run: its events and every workload operation on one time axis.

:func:`render` turns a :class:`~pytest_openshell.history.History` into one self-contained HTML
page (inline SVG and CSS, no script, nothing fetched): a lane of the scenario's own events
(disruption, gateway down, API answering, the held session's stall, each sandbox answering
again, SSH back), then a lane per client thread with each operation as a bar from its invocation
to its completion, coloured by outcome, with its details in a tooltip.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from pytest_openshell.history import Event, History, Kind, Operation, Outcome

COLOURS = {Outcome.OK: "#2e9e44", Outcome.FAIL: "#e8862a", Outcome.UNKNOWN: "#8a5cc7"}
EVENT_COLOURS = {
    "disruption": "#d62728",
    "gateway down": "#7f7f7f",
    "held session stall": "#bcbd22",
}
LEFT = 170
WIDTH = 1200
LANE = 26
BAR = 16


def _x(at: float, end: float) -> float:
    return LEFT + (WIDTH - LEFT - 20) * (at / end if end > 0 else 0)


def derived_events(history: History) -> list[Event]:
    """Events read off the operations: when each sandbox answered again after the API did (its
    first acknowledged exec), and when SSH first worked again."""
    answered = [e.at for e in history.events if e.what == "API answers"]
    if not answered:
        return []
    since = answered[0]
    found: list[Event] = []
    seen: set[str] = set()
    ssh_back = False
    for op in sorted(history.operations, key=lambda o: o.completed):
        if op.outcome is not Outcome.OK or op.invoked < since:
            continue
        if op.kind in {Kind.APPEND, Kind.READ} and op.sandbox not in seen:
            seen.add(op.sandbox)
            found.append(Event(op.completed, f"{op.sandbox} Ready (answers)"))
        if op.via == "ssh" and not ssh_back:
            ssh_back = True
            found.append(Event(op.completed, "SSH back"))
    return found


def _title(op: Operation) -> str:
    text = op.describe()
    if op.sandbox_id:
        text += f"\nid {op.sandbox_id}"
    if op.error:
        text += f"\n{op.error}"
    if op.kind is Kind.READ and op.outcome is Outcome.OK:
        text += f"\nread {len(op.lines)} lines"
    return text


def _rect(x0: float, y: float, x1: float, *, colour: str, title: str, height: int = BAR) -> str:
    width = max(x1 - x0, 2.0)
    return (
        f'<rect x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height}" rx="2" '
        f'fill="{colour}" fill-opacity="0.85"><title>{html.escape(title)}</title></rect>'
    )


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">'
        f"{html.escape(text)}</text>"
    )


def render(history: History, *, title: str | None = None, verdict: Iterable[str] = ()) -> str:
    """The page for ``history``; ``verdict`` lines (the checker's findings) go above it."""
    events = [*history.events, *derived_events(history)]
    ops = history.operations
    end = max([1.0, *(op.completed for op in ops), *(e.until or e.at for e in events)]) * 1.02
    spans = [e for e in events if e.until is not None]
    instants = sorted((e for e in events if e.until is None), key=lambda e: e.at)
    processes = sorted({op.process for op in ops})
    span_lanes = list(dict.fromkeys(e.what for e in spans))
    top = 40
    rows = len(span_lanes) + 1 + len(processes)
    height = top + rows * LANE + 40 + 14 * len(instants)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">'
    ]
    # the axis: a tick every "nice" number of seconds
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600) if end / s <= 14)
    tick = 0.0
    while tick <= end:
        x = _x(tick, end)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 10}" x2="{x:.1f}" y2="{top + rows * LANE}" '
            'stroke="#ddd"/>'
        )
        parts.append(_text(x, top - 14, f"{tick:g} s", size=10, anchor="middle"))
        tick += step
    y = top
    for what in span_lanes:
        parts.append(_text(8, y + 13, what))
        for e in spans:
            if e.what == what and e.until is not None:
                colour = next(
                    (c for name, c in EVENT_COLOURS.items() if what.startswith(name)), "#1f77b4"
                )
                label = f"{what}: {e.at:.2f}-{e.until:.2f} s ({e.until - e.at:.2f} s)"
                parts.append(
                    _rect(_x(e.at, end), y + 4, _x(e.until, end), colour=colour, title=label)
                )
        y += LANE
    parts.append(_text(8, y + 13, "events"))
    for e in instants:
        x = _x(e.at, end)
        parts.append(
            f'<line x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{top + rows * LANE}" '
            f'stroke="#1f77b4" stroke-dasharray="3,3"><title>{html.escape(e.what)} '
            f"at {e.at:.2f} s</title></line>"
        )
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y + 12}" r="5" fill="#1f77b4">'
            f"<title>{html.escape(e.what)} at {e.at:.2f} s</title></circle>"
        )
    y += LANE
    for process in processes:
        parts.append(_text(8, y + 13, f"client {process}"))
        for op in ops:
            if op.process == process:
                colour = COLOURS[op.outcome]
                parts.append(
                    _rect(
                        _x(op.invoked, end),
                        y + 4,
                        _x(op.completed, end),
                        colour=colour,
                        title=_title(op),
                    )
                )
        y += LANE
    # the instants' names, listed under the chart in time order
    y += 16
    for e in instants:
        parts.append(_text(LEFT, y, f"{e.at:7.2f} s  {e.what}", size=11))
        y += 14
    parts.append("</svg>")
    counts = {o: sum(1 for op in ops if op.outcome is o) for o in Outcome}
    legend = " ".join(
        f'<span class="key" style="background:{COLOURS[o]}"></span>{o.value} ({counts[o]})'
        for o in Outcome
    )
    heading = title or f"scenario {history.scenario}"
    transport = f"transport {html.escape(history.transport)}; " if history.transport else ""
    findings = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(heading)}</title>"
        "<style>body{font-family:sans-serif;margin:16px}"
        ".key{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px}"
        "li{white-space:pre-wrap;font-family:monospace}</style></head><body>"
        f"<h2>{html.escape(heading)}</h2>"
        f"<p>{transport}seed {history.seed}; {len(ops)} operations: {legend}</p>"
        f"<ul>{findings}</ul>" + "".join(parts) + "</body></html>\n"
    )
