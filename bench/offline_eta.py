"""Offline ETA: the preflight's estimate of an offline move against the move's own time.

A stopped server (its disk holding DATA_MIB of random data) goes back and forth between node1
and node2, offline. For every move the figure keeps the model's figure (1 s and the allocated
data over the measured link), the tail recent offline moves in the same direction taught
(services.calibration.offline_tail; none until there are three, the fleet's meanwhile) and
the estimate shown, each against the task's time. The first moves of a fresh stage have no
history to learn from: their error is the model's.
"""
from __future__ import annotations

from app import status
from bench.stats import summary
from bench.tls import _fill

DATA_MIB = 128
TARGET = 0.15


def offline_eta(stage, moves: int) -> dict:
    """`moves` offline moves, directions alternating; each move's estimate and its error."""
    name = "bench-offline-eta"
    cold = stage.server("node1", name, format="raw", stopped=True)
    _fill(stage, "node1", cold["disk"], DATA_MIB)
    stage.sync()
    here, there, rows = "node1", "node2", []
    for _ in range(moves):
        task = stage.ferry([name], there, live=False)["tasks"][0]
        predicted = (task.get("eta") or {}).get("preflight") or {}
        actual = task["total_ms"] / 1000 if task["total_ms"] else None
        row = {"route": f"{here}->{there}", "ok": task["status"] == status.MIGRATION_FINISHED,
               "actual_s": actual, "model_s": predicted.get("model_s"),
               "tail_s": predicted.get("tail_s"), "estimate_s": predicted.get("seconds")}
        for key, value in (("error", row["estimate_s"]), ("model_error", row["model_s"])):
            row[key] = (round((value - actual) / actual, 4)
                        if row["ok"] and actual and value is not None else None)
        rows.append(row)
        if row["ok"]:
            here, there = there, here
    learned = [r["error"] for r in rows if r["tail_s"] is not None and r["error"] is not None]
    within = (round(sum(abs(e) <= TARGET for e in learned) / len(learned), 3)
              if learned else None)
    return {
        "what": f"preflight estimate vs task time of offline moves of a stopped server (1 GiB "
                f"raw disk holding {DATA_MIB} MiB of random data), node1 <-> node2; `error` of "
                "the estimate shown, `model_error` of the model alone (no learned tail)",
        "target": f"within +-{TARGET:.0%} once a tail is learned",
        "error": summary(learned), "model_error": summary(r["model_error"] for r in rows),
        "within": within, "learned_moves": len(learned),
        "met": bool(learned) and within == 1.0, "moves": rows,
    }
