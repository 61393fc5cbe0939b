"""ETA calibration: Ferry learns how far its model is off on this fleet, from its own history.

The pre-copy model counts bytes over a probed bandwidth. What it cannot see
varies by fleet and is stable within one: zero pages QEMU sends as a few
bytes (a lightly used guest moves far less than its memory size), libvirt's
peer-to-peer setup before its job clock starts (connection, Prepare, QEMU
started on the destination) and its finish after the last byte (device
state, Finish and Confirm over the tunnel). So every finished live task
leaves two numbers behind, and the next estimate is corrected by their
median over the recent tasks:

* at start: actual time / the model's own prediction (a factor);
* while running: actual end - (when a live estimate was made + what it
  said was left) for the move's last estimate of the same phase (a tail in
  seconds). In the RAM phase that is libvirt's finish, all the model leaves
  out by then; during the disk copy it also holds what the model gets wrong
  there (memory the guest touched but QEMU sends as zero pages: a lab move's
  disk-copy estimates with the RAM phase's tail came out +17..+31 %).

Moves like the one estimated teach first: between the same two nodes (either
way) and of a guest with half to double its memory. A fleet's history mixes
links and sizes (a 1 GiB guest that is mostly zero pages moves in half the
model's time, a 256 MiB one in twice), and one median over all of it is right
for none; with fewer than MIN_SAMPLES like moves, the fleet's recent moves
stand in.

Offline moves teach a tail of their own (`offline_tail`): the seconds a move took beyond
the model's figure, which counts only the allocated data over the link. What the model
leaves out there does not go with the bytes, and depends on the direction: exporting,
creating a logical volume (4-12 s on the lab's LVM node under TCG), the verify's second
read, defining and removing. In one `make test` run the model said 1.1 s for moves of
4-28 s (into the LVM node 19 s), and 10 s for one out of it that took 7.

Only plain moves teach: one the ladder had to push (auto-converge, a CPU
throttle, post-copy, a warning that it would not converge) ran in another
regime, and learning from it would skew the estimate of every plain move.
Nor does a move of a guest libvirt saw dirty its memory (from the second pass on) whose
preflight did not know how fast it writes (no sample, no earlier move to learn from:
services.preflight.learn_dirty_rates): its estimate missed that, not what the model cannot
see, and taught a factor of 1.32 that put the next, informed estimates of the same guests at
+35 % (bench eta_repeat; the model alone was within 10 % on each). The same goes for its
disk-copy estimates; its last RAM-phase one was made with the rate libvirt measured, and
teaches the RAM phase's tail (leaving it out left the first informed moves of a fresh fleet
without one: -27 % at a quarter of the move).
With fewer than MIN_SAMPLES such tasks there is no correction. Raw
model values are stored beside the calibrated ones (`model_s`,
`model_remaining_s`), and the calibration learns only from raw ones, so it
never feeds on itself.
"""
from __future__ import annotations

from statistics import median
from typing import NamedTuple

from sqlalchemy.orm import selectinload

from app import status
from app.extensions import db
from app.models import MigrationTask, Server, TaskEvent

RECENT = 20
MIN_SAMPLES = 3
FACTOR_RANGE = (0.5, 3.0)
TAIL_RANGE = (0.0, 120.0)
# An offline move's tail may be negative (the model's link rate was too low a guess for the
# copy), and long: volumes created on a slow node, a verify's second read of a large disk.
OFFLINE_TAIL_RANGE = (-120.0, 600.0)


def factor_from(pairs) -> float | None:
    """Median actual / predicted over (predicted_s, actual_s) pairs, clamped; None if too few.

    >>> factor_from([(10, 12), (10, 15), (8, 10)])
    1.25
    >>> factor_from([(10, 12)]) is None
    True
    """
    ratios = [actual / predicted for predicted, actual in pairs if predicted and predicted > 0]
    if len(ratios) < MIN_SAMPLES:
        return None
    return round(min(max(median(ratios), FACTOR_RANGE[0]), FACTOR_RANGE[1]), 3)


def tail_from(points, bounds=TAIL_RANGE) -> float | None:
    """Median seconds the run went past (at_s + model_remaining_s), over (at_s, remaining_s,
    actual_s) triples, clamped to `bounds`; None if too few.

    >>> tail_from([(3, 1, 7), (3, 0.5, 6), (2, 1, 5)])
    2.5
    >>> tail_from([(0, 10.0, 7.0), (0, 9.0, 6.0), (0, 11.0, 7.5)], OFFLINE_TAIL_RANGE)
    -3.0
    """
    tails = [actual - (at + remaining) for at, remaining, actual in points]
    if len(tails) < MIN_SAMPLES:
        return None
    return round(min(max(median(tails), bounds[0]), bounds[1]), 2)


# Timeline kinds of a move the ladder had to push beyond raising the downtime.
ESCALATED = frozenset({"auto-converge", "throttle", "postcopy", "postcopy-overdue",
                       "not-converging"})


class Like(NamedTuple):
    """The move an estimate is for: which recent moves are like it."""

    source_id: int
    destination_id: int
    memory_mib: int


def _recent_live(like: Like | None = None):
    """The latest finished plain live moves (see above) with their result and ETA record; with
    `like`, only those between the same two nodes, of a guest of similar memory."""
    escalated = db.select(TaskEvent.task_id).where(TaskEvent.kind.in_(ESCALATED))
    query = (db.select(MigrationTask)
             .where(MigrationTask.status == status.MIGRATION_FINISHED,
                    MigrationTask.mode == status.MODE_LIVE, MigrationTask.id.not_in(escalated)))
    if like is not None:
        pair = (like.source_id, like.destination_id)
        query = (query.join(Server, Server.id == MigrationTask.server_id)
                 .where(MigrationTask.source_id.in_(pair), MigrationTask.destination_id.in_(pair),
                        Server.memory_mib.between(like.memory_mib / 2, like.memory_mib * 2)))
    # Each task's server comes with it: knew_how_it_writes reads its name.
    return db.session.scalars(query.options(selectinload(MigrationTask.server))
                              .order_by(MigrationTask.id.desc()).limit(RECENT)).all()


def knew_how_it_writes(task) -> bool:
    """False for a move whose guest libvirt saw dirty its memory while its preflight had no
    dirty rate for it (see above)."""
    if not task.result_record.dirty_rate_bps:
        return True
    known = (task.preflight or {}).get("dirty_rate_bps") or {}
    return bool(task.server is not None and known.get(task.server.name))


class Route(NamedTuple):
    """The direction of an offline move: which recent offline moves are like it."""

    source_id: int
    destination_id: int


def _recent_offline(route: Route | None = None):
    """The latest finished offline moves; with `route`, only those in the same direction."""
    query = db.select(MigrationTask).where(MigrationTask.status == status.MIGRATION_FINISHED,
                                           MigrationTask.mode == status.MODE_OFFLINE)
    if route is not None:
        query = query.where(MigrationTask.source_id == route.source_id,
                            MigrationTask.destination_id == route.destination_id)
    return db.session.scalars(query.order_by(MigrationTask.id.desc()).limit(RECENT)).all()


def _actual_s(task):
    return (task.result_record.wall_ms or 0) / 1000 or None


def _predicted_and_actual(tasks) -> list[tuple[float, float]]:
    """(the preflight model's raw seconds, the actual seconds) of each task that has both."""
    pairs = []
    for task in tasks:
        predicted = task.eta_record.preflight
        raw = predicted.raw_s if predicted else None
        if _actual_s(task) and isinstance(raw, (int, float)):
            pairs.append((raw, _actual_s(task)))
    return pairs


def _learned(learn, like: Like | None):
    """learn(tasks) over the moves like this one, else over the fleet's."""
    value = learn(_recent_live(like)) if like is not None else None
    return value if value is not None else learn(_recent_live())


def start_factor(like: Like | None = None) -> float | None:
    """The correction for a pre-start live estimate, or None while there is too little history."""
    return _learned(lambda tasks: factor_from(_predicted_and_actual(
        [task for task in tasks if knew_how_it_writes(task)])), like)


def live_tail(like: Like | None = None, phase: str = "ram") -> float | None:
    """Seconds a live estimate made in `phase` ("disk" or "ram") leaves out, learned from each
    recent move's last estimate of that phase (one from before phases were recorded counts as
    "ram"), or None while there is too little history."""
    def learn(tasks):
        points = []
        for task in tasks:
            if phase == "disk" and not knew_how_it_writes(task):
                continue  # its last RAM-phase estimate had libvirt's own dirty rate: it teaches
            history = [p for p in task.eta_record.history if (p.phase or "ram") == phase]
            point = history[-1] if history else None
            if point is None or not _actual_s(task):
                continue
            remaining = point.raw_remaining_s
            if isinstance(remaining, (int, float)) and isinstance(point.at_s, (int, float)):
                points.append((point.at_s, remaining, _actual_s(task)))
        return tail_from(points)
    return _learned(learn, like)


def offline_tail(route: Route | None = None) -> float | None:
    """Seconds an offline move takes beyond its model's figure (1 s and the allocated data
    over the link), learned from the recent moves in the same direction, else from the
    fleet's; None while there is too little history."""
    def learn(tasks):
        return tail_from([(0.0, raw, actual) for raw, actual in _predicted_and_actual(tasks)],
                         OFFLINE_TAIL_RANGE)
    value = learn(_recent_offline(route)) if route is not None else None
    return value if value is not None else learn(_recent_offline())
