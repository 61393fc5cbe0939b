"""The small remaining-memory chart on a task's page: an SVG polyline built on the server.

A live task's progress keeps `history`, a list of [seconds since start,
memory remaining, data remaining] samples (see services.live). The chart is
a few points scaled into a fixed box, so the page needs no script to draw it.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    """What the template draws: the polyline's points and the axis labels."""

    points: str  # "x,y x,y ..." for <polyline points=...>
    width: int
    height: int
    max_bytes: int
    seconds: float
    last_y: float


def memory_chart(history, width=320, height=80, pad=2):
    """Scale the samples' memory remaining into a width × height box; None below two samples.

    Time runs left to right over the samples' span, bytes bottom (0) to top
    (the largest value seen), so the line falls as the migration converges
    and a re-dirtying guest shows as a saw-tooth. Samples from the disk copy,
    before any memory is counted, are left out.

    >>> c = memory_chart([[0, 100, 0], [1, 50, 0], [2, 0, 0]], width=104, height=54)
    >>> c.points
    '2.0,2.0 52.0,27.0 102.0,52.0'
    >>> memory_chart([[0, 5, 0]]) is None
    True
    >>> memory_chart([[0, 0, 9], [1, 0, 8], [2, 100, 7], [3, 0, 0]], width=104, height=54).points
    '2.0,2.0 102.0,52.0'

    """
    samples = [(float(s[0]), max(float(s[1] or 0), 0.0)) for s in history or []
               if s and len(s) >= 2 and s[0] is not None]
    # libvirt reports no memory remaining while it still copies the disks: start at the RAM phase.
    first = next((i for i, (_, v) in enumerate(samples) if v > 0), 0)
    samples = samples[first:]
    if len(samples) < 2:
        return None
    t0 = samples[0][0]
    span = max(samples[-1][0] - t0, 1e-9)
    top = max(v for _, v in samples) or 1.0
    inner_w, inner_h = width - 2 * pad, height - 2 * pad
    coords = [(pad + (t - t0) / span * inner_w, pad + (1 - v / top) * inner_h) for t, v in samples]
    return Chart(points=" ".join(f"{x:.1f},{y:.1f}" for x, y in coords), width=width,
                 height=height, max_bytes=int(top), seconds=round(span, 1), last_y=coords[-1][1])
