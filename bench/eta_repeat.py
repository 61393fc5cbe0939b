"""ETA of busy guests moved again: what a server's last live move taught its next estimate.

A lab that runs its guests under TCG cannot sample how fast a guest writes before a move
(FERRY_SAMPLE_DIRTY_RATE is off: the sampling made TCG guests panic), so the first live move
of a busy guest is estimated as if the guest were idle (link_eta's misses). Every live move
keeps the dirty rate libvirt saw and the most memory a pass found dirty, and the server's next
preflight uses them (services.preflight.learn_dirty_rates). Here each busy guest goes node1 ->
node2 -> node1 ..., on the shaped link of link_eta; the first move of each has nothing to
learn from, every later one has its previous move. Errors are link_eta's: the preflight's
estimate and the live estimate a quarter of the way through, against the migration's time.
"""
from __future__ import annotations

from app.extensions import db
from app.models import MigrationGroup
from bench.figures import _eta_row
from bench.stats import summary

# Memory (MiB) and dirty rate (MiB/s, over a 64 MiB region) of the busy guests: all converge.
BUSY = ((256, 8), (256, 12), (192, 6))
TARGET = 0.15


def eta_repeat(stage, guests: int, trips: int, mbit: int) -> dict:
    """`guests` busy guests, each moved `trips` times between node1 and node2."""
    configs = [BUSY[i % len(BUSY)] for i in range(guests)]
    names = [f"bench-again{i}" for i in range(guests)]
    for name, (memory, dirty) in zip(names, configs):
        stage.server("node1", name, memory=memory, dirty_rate=dirty, dirty_size=64)
    stage.boot(names)
    stage.sync()
    rows = []
    max_age = stage.app.config["THROUGHPUT_MAX_AGE"]
    stage.app.config["THROUGHPUT_MAX_AGE"] = 0  # as link_eta: the link probed before each move
    try:
        with stage.shaped(["node1", "node2"], mbit):
            for trip in range(trips):
                for name, (memory, dirty) in zip(names, configs):
                    report = stage.ferry([name], "node2" if trip % 2 == 0 else "node1")
                    row = _eta_row(stage, report, memory, dirty)
                    row.update(trip=trip, **_learned(stage, report["group"], name))
                    rows.append(row)
    finally:
        stage.app.config["THROUGHPUT_MAX_AGE"] = max_age
    first = [r for r in rows if r["trip"] == 0]
    taught = [r for r in rows if r["dirty_rate_from"] == "last move"]

    def within(group, key):
        values = [r[key] for r in group]
        return (round(sum(v is not None and abs(v) <= TARGET for v in values) / len(values), 3)
                if values else None)
    return {
        "what": f"busy guests (memory MiB, dirty MiB/s: {configs}) moved {trips} times between "
                f"node1 and node2 on a {mbit} Mbit/s link; ETA error (predicted - actual) / "
                "actual at the start and at a quarter of the move's time, of their first moves "
                "(nothing learned) and of the moves whose preflight had the server's last move",
        "target": f"within +-{TARGET:.0%}",
        "first": {"error_at_start": summary(r["eta_error_start"] for r in first),
                  "error_at_25": summary(r["eta_error_25"] for r in first),
                  "within_at_start": within(first, "eta_error_start"),
                  "within_at_25": within(first, "eta_error_25")},
        "learned": {"moves": len(taught),
                    "error_at_start": summary(r["eta_error_start"] for r in taught),
                    "error_at_25": summary(r["eta_error_25"] for r in taught),
                    "within_at_start": within(taught, "eta_error_start"),
                    "within_at_25": within(taught, "eta_error_25")},
        "met": bool(taught) and within(taught, "eta_error_start") == 1.0
        and within(taught, "eta_error_25") == 1.0,
        "runs": rows,
    }


def _learned(stage, group_id: int, name: str) -> dict:
    """What the move's preflight knew of the guest's writing, and what the move saw."""
    with stage.app.app_context():
        db.session.expire_all()
        task = db.session.get(MigrationGroup, group_id).tasks[0]
        measured = (task.preflight or {}).get("measured") or {}
        result = task.result_record
        return {"dirty_rate_from": (measured.get("dirty_rate_from") or {}).get(name),
                "preflight_dirty_bps": (measured.get("dirty_rate_bps") or {}).get(name),
                "preflight_dirty_set_bytes": (measured.get("dirty_set_bytes") or {}).get(name),
                "seen_dirty_bps": result.dirty_rate_bps,
                "seen_dirty_set_bytes": result.dirty_set_bytes}
