"""The live-migration monitor loop's decisions: Ferry's escalation ladder.

The job polls `dom.jobStats()` about twice a second, turns the dict into a
`JobStats`, and asks `decide(state, stats, now, settings)` what to do. The
answer is a list of actions, each with a sentence for the task's timeline;
the job carries them out through its libvirt wrapper and records them. No
I/O here: everything is a function of its arguments (`decide` updates the
`LadderState` it is given, which is the loop's memory between polls).

The ladder, bottom to top (each rung only while the migration has not
finished; all timing scaled by the guest's memory size):

0. At the first poll: allowed downtime = target / steps (nova's schedule:
   with 300 ms and 10 steps: 30, 57, 84 ... 300 ms). Low first, so a guest
   that converges anyway gets the shortest pause.
1. Downtime steps: step i is due `step_delay_per_gib_s * memory_GiB * i`
   seconds after the RAM phase began, and is taken only once QEMU has
   finished a full pass (memory_iteration >= 2): before that nothing is known
   about convergence, and during the disk copy downtime is irrelevant. A
   migration that completes in its first passes never escalates.
2. Auto-converge: QEMU only offers it as a start flag (VIR_MIGRATE_AUTO_CONVERGE)
   and then throttles the vCPUs by itself (20 %, +10 % per pass) when it sees
   no convergence; libvirt cannot switch it on mid-flight. So the job starts
   every live migration with AUTO_CONVERGE when `settings.auto_converge`, and
   this rung is a recorded window: once the downtime reached its target, the
   ladder notes it (with libvirt's current `auto_converge_throttle`) and gives
   the throttle `auto_converge_window_per_gib_s * memory_GiB` seconds. When
   QEMU's throttle first shows up in the stats, that is recorded too.
3. Post-copy: only if the task allows it (then the job started with
   VIR_MIGRATE_POSTCOPY), only in the RAM phase (QEMU refuses it during the
   disk copy), once. From then on the ladder never aborts: the guest's memory
   is split between the hosts and an abort would lose it.
4. Abort: once nothing left can help (post-copy not allowed, QEMU's throttle at
   its most, THROTTLE_MAX, for a full pass and the guest still beyond the target
   downtime's reach on HOPELESS_POLLS polls in a row: what dirties its memory then
   is not its vCPUs but a device), at once rather than at the deadline; else at the
   completion deadline (`completion_timeout_per_gib_s` x data
   GiB, at least `min_deadline_s`) or after `progress_timeout_s` without
   progress (the remaining data never reached a new low; each ladder step
   restarts that clock, since it changes the conditions). libvirt's abortJob
   leaves the guest running on the source.

A guest that no downtime step can help skips the climb: once QEMU has finished a full
pass and, on HOPELESS_POLLS polls in a row, the guest dirties memory so fast that even the
target downtime would need more than `max_passes` passes (lambda >= 1: faster than the link
carries), the ladder jumps to the rung that can converge: post-copy at once when the task
allows it, otherwise the target downtime at once with auto-converge's window starting now.
Walking ten steps first only added their time to the move, with the guest's vCPUs
throttled harder by QEMU all along (bench convergence: moves ended at their deadline).

Alongside, a "will not converge at current settings" signal (edge-triggered,
with hysteresis) from the dirty rate vs the bandwidth: `WillNotConverge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from app.services.estimation import GIB, MIB, judge_convergence

# virDomainJobType
JOB_NONE = 0
JOB_BOUNDED = 1
JOB_UNBOUNDED = 2
JOB_COMPLETED = 3
JOB_FAILED = 4
JOB_CANCELLED = 5

# libvirt reports memory_dirty_rate in pages per second and memory_page_size
# in bytes (since 3.9); older daemons omit the page size: x86 uses 4 KiB.
DEFAULT_PAGE_SIZE = 4096

# Hysteresis for the convergence signal: raised at lambda >= 1, cleared only
# below 0.9, so a dirty rate hovering near the bandwidth does not flap.
CONVERGING_AGAIN_RATIO = 0.9

# Polls in a row (about half a second apart) that must find the guest beyond what the target
# downtime can absorb before the ladder jumps past the downtime steps: one poll can fall on
# a dip of the bandwidth between two passes.
HOPELESS_POLLS = 2

# QEMU's auto-converge throttle rises no further than this (its max-cpu-throttle parameter,
# 99 % by default; libvirt cannot set it): at it, the ladder has nothing left to try.
THROTTLE_MAX = 99


@dataclass(frozen=True)
class JobStats:
    """One sample of libvirt's jobStats(), in bytes, ms and bytes per second."""

    type: int = JOB_UNBOUNDED
    time_elapsed_ms: int = 0
    data_total: int = 0
    data_processed: int = 0
    data_remaining: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    memory_dirty_rate_bps: int = 0  # converted from pages/s
    memory_iteration: int = 0
    memory_bps: int = 0
    memory_page_size: int = DEFAULT_PAGE_SIZE
    memory_constant: int = 0  # pages found zero (sent as a few bytes each), all passes
    memory_normal: int = 0  # pages sent in full, all passes
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    downtime_ms: Optional[int] = None
    auto_converge_throttle: int = 0  # percent
    postcopy_requests: int = 0

    @classmethod
    def from_libvirt(cls, raw: Mapping[str, Any]) -> "JobStats":
        """Build a JobStats from the dict `dom.jobStats()` returns.

        >>> s = JobStats.from_libvirt({"type": 2, "memory_dirty_rate": 1000,
        ...                            "memory_page_size": 4096, "time_elapsed": 1500})
        >>> s.memory_dirty_rate_bps, s.time_elapsed_ms, s.downtime_ms
        (4096000, 1500, None)
        """
        def num(key: str) -> int:
            return int(raw.get(key) or 0)

        page = num("memory_page_size") or DEFAULT_PAGE_SIZE
        return cls(
            type=num("type"),
            time_elapsed_ms=num("time_elapsed"),
            data_total=num("data_total"),
            data_processed=num("data_processed"),
            data_remaining=num("data_remaining"),
            memory_total=num("memory_total"),
            memory_processed=num("memory_processed"),
            memory_remaining=num("memory_remaining"),
            memory_dirty_rate_bps=num("memory_dirty_rate") * page,
            memory_iteration=num("memory_iteration"),
            memory_bps=num("memory_bps"),
            memory_page_size=page,
            memory_constant=num("memory_constant"),
            memory_normal=num("memory_normal"),
            disk_total=num("disk_total"),
            disk_processed=num("disk_processed"),
            disk_remaining=num("disk_remaining"),
            downtime_ms=int(raw["downtime"]) if raw.get("downtime") is not None else None,
            auto_converge_throttle=num("auto_converge_throttle"),
            postcopy_requests=num("memory_postcopy_requests"),
        )

    @property
    def active(self) -> bool:
        """Return True while libvirt reports a running job."""
        return self.type in (JOB_BOUNDED, JOB_UNBOUNDED)

    @property
    def ram_phase(self) -> bool:
        """Return True once QEMU has begun sending memory (the disk copy is done)."""
        # With NON_SHARED_DISK libvirt mirrors the disks first and starts the
        # RAM migration only when the mirrors are ready: memory stats stay 0.
        return self.memory_total > 0 and (
            self.memory_processed > 0 or self.memory_iteration >= 1)


@dataclass(frozen=True)
class LadderSettings:
    """The ladder's knobs; every duration in seconds, scaled per GiB where named so."""

    downtime_target_ms: int = 300
    downtime_steps: int = 10
    # Ferry's own defaults: nova's 75 s/GiB between steps suits long-haul
    # clouds; measured lab links move 1 GiB in ~2 s, so 10 s/GiB still gives
    # each step several passes to show its effect.
    step_delay_per_gib_s: float = 10.0
    auto_converge: bool = True  # the job started the migration with AUTO_CONVERGE
    auto_converge_window_per_gib_s: float = 30.0
    postcopy: bool = False  # the task allows it: started with POSTCOPY
    completion_timeout_per_gib_s: float = 150.0  # KubeVirt's default
    progress_timeout_s: float = 150.0  # KubeVirt's default
    min_deadline_s: float = 120.0
    min_scale_gib: float = 1.0  # small guests get the timings of 1 GiB
    max_passes: int = 30


@dataclass
class LadderState:
    """What the loop remembers between polls; `decide` updates it."""

    started_at: Optional[float] = None
    ram_phase_at: Optional[float] = None
    downtime_step: int = -1  # index in downtime_steps(); -1 = not set yet
    top_reached_at: Optional[float] = None
    auto_converge_at: Optional[float] = None
    throttle_seen: bool = False
    postcopy_at: Optional[float] = None
    postcopy_refused_noted: bool = False
    lowest_remaining: Optional[int] = None
    progress_at: Optional[float] = None
    not_converging: bool = False
    hopeless_polls: int = 0  # polls in a row beyond the target downtime's reach
    jumped: bool = False  # the climb was skipped (see _jump)
    most_throttle_pass: Optional[int] = None  # the pass in which the throttle was at its most
    spent_polls: int = 0  # polls in a row after a full such pass, beyond the target's reach
    overdue_noted: bool = False
    aborted: bool = False

    @property
    def in_postcopy(self) -> bool:
        """Return True once post-copy was started (never abort from then on)."""
        return self.postcopy_at is not None


@dataclass(frozen=True, kw_only=True)
class Action:
    """Something the monitor loop should do; `message` goes on the timeline."""

    message: str
    kind: str = "note"


@dataclass(frozen=True, kw_only=True)
class SetDowntime(Action):
    """Call dom.migrateSetMaxDowntime(downtime_ms)."""

    downtime_ms: int
    step: int
    kind: str = "downtime"


@dataclass(frozen=True, kw_only=True)
class StartPostCopy(Action):
    """Call dom.migrateStartPostCopy()."""

    kind: str = "postcopy"


@dataclass(frozen=True, kw_only=True)
class Abort(Action):
    """Call dom.abortJob(); reason is "cannot converge", "deadline" or "stall"."""

    reason: str
    kind: str = "abort"


@dataclass(frozen=True, kw_only=True)
class WillNotConverge(Action):
    """Flag the task: the migration will not converge at current settings."""

    ratio: float
    kind: str = "not-converging"


@dataclass(frozen=True, kw_only=True)
class Note(Action):
    """Only a timeline event (kinds: auto-converge, throttle, converging, ...)."""


def scale_gib(settings: LadderSettings, nbytes: int) -> float:
    """Return the size in GiB used to scale timings, at least `min_scale_gib`.

    >>> scale_gib(LadderSettings(), 256 * MIB), scale_gib(LadderSettings(), 3 * GIB)
    (1.0, 3.0)
    """
    return max(settings.min_scale_gib, nbytes / GIB)


def downtime_steps(settings: LadderSettings, memory_bytes: int) -> list[tuple[float, int]]:
    """Return (seconds after the RAM phase began, downtime ms) for each step.

    Nova's schedule: base = target / steps, then equal increments up to the
    target; steps are `step_delay_per_gib_s * memory_GiB` apart.

    >>> downtime_steps(LadderSettings(downtime_target_ms=300, downtime_steps=3), 2 * GIB)
    [(0.0, 100), (20.0, 166), (40.0, 233), (60.0, 300)]
    """
    steps = max(1, settings.downtime_steps)
    target = settings.downtime_target_ms
    delay = settings.step_delay_per_gib_s * scale_gib(settings, memory_bytes)
    base = target / steps
    offset = (target - base) / steps
    return [(delay * i, int(base + offset * i)) for i in range(steps + 1)]


def completion_deadline_s(settings: LadderSettings, data_bytes: int) -> float:
    """Return the seconds after the start at which the migration is aborted.

    >>> completion_deadline_s(LadderSettings(), 3 * GIB)
    450.0
    >>> completion_deadline_s(LadderSettings(), 256 * MIB)
    150.0
    """
    return max(settings.min_deadline_s,
               settings.completion_timeout_per_gib_s * scale_gib(settings, data_bytes))


def progress_percent(stats: JobStats) -> float:
    """Return progress = 100 - remaining / total, from data (else memory) stats.

    >>> progress_percent(JobStats(data_total=1000, data_remaining=250))
    75.0
    >>> progress_percent(JobStats())
    0.0
    """
    total, remaining = stats.data_total, stats.data_remaining
    if total <= 0:
        total, remaining = stats.memory_total, stats.memory_remaining
    if total <= 0:
        return 0.0
    return min(100.0, max(0.0, 100.0 - remaining * 100.0 / total))


def decide(state: LadderState, stats: JobStats, now: float,
           settings: LadderSettings) -> list[Action]:
    """Decide the monitor loop's actions for one jobStats sample (`now` in seconds).

    Worked example (target 300 ms in 3 steps, 1 GiB guest: steps at 0, 10,
    20, 30 s of RAM phase): the first poll sets 100 ms; a guest still in its
    third pass 12 s into the RAM phase gets 166 ms.

    >>> s, cfg = LadderState(), LadderSettings(downtime_steps=3)
    >>> ram = dict(memory_total=GIB, memory_processed=GIB, memory_remaining=GIB // 2,
    ...            data_total=GIB, data_remaining=GIB // 2, memory_bps=100 * MIB)
    >>> [a.downtime_ms for a in decide(s, JobStats(memory_iteration=1, **ram), 0.0, cfg)]
    [100]
    >>> [a.downtime_ms for a in decide(s, JobStats(memory_iteration=3, **ram), 12.0, cfg)]
    [166]
    """
    if not stats.active or state.aborted:
        return []
    actions: list[Action] = []
    if state.started_at is None:
        state.started_at = now
        state.progress_at = now
    if stats.postcopy_requests > 0 and state.postcopy_at is None:
        state.postcopy_at = now  # switched by someone else (or we missed it)
    if state.lowest_remaining is None or stats.data_remaining < state.lowest_remaining:
        state.lowest_remaining = stats.data_remaining
        state.progress_at = now
    if stats.ram_phase and state.ram_phase_at is None:
        state.ram_phase_at = now

    schedule = downtime_steps(settings, stats.memory_total)
    if state.downtime_step < 0:
        state.downtime_step = 0
        actions.append(SetDowntime(
            downtime_ms=schedule[0][1], step=0,
            message=(f"Allowed downtime set to {schedule[0][1]} ms to start with; it rises"
                     f" in {len(schedule) - 1} steps to {settings.downtime_target_ms} ms"
                     " only if the migration does not converge.")))
    if stats.auto_converge_throttle > 0 and not state.throttle_seen:
        state.throttle_seen = True
        actions.append(Note(kind="throttle", message=(
            f"QEMU's auto-converge started throttling the guest's vCPUs"
            f" ({stats.auto_converge_throttle} %) to slow its memory writes.")))

    if state.in_postcopy:
        return actions + _overdue_in_postcopy(state, stats, now, settings)

    abort = _abort(state, stats, now, settings)
    if abort:
        state.aborted = True
        return actions + [abort]

    actions += _convergence_signal(state, stats, schedule)
    actions += _climb(state, stats, now, settings, schedule)
    return actions


def _abort(state: LadderState, stats: JobStats, now: float,
           settings: LadderSettings) -> Optional[Abort]:
    """Return an Abort when nothing left can help, at the deadline or after the stall
    timeout, else None."""
    deadline = completion_deadline_s(settings, stats.data_total)
    if _nothing_left(state, stats, settings):
        return Abort(reason="cannot converge", message=(
            f"Aborted: QEMU throttles the guest's vCPUs by {stats.auto_converge_throttle} %,"
            f" its most, and after a full pass at that the guest still dirties"
            f" {stats.memory_dirty_rate_bps / MIB:.0f} MiB/s while the link carries"
            f" {stats.memory_bps / MIB:.0f} MiB/s (what writes its memory now is likely a"
            f" device, network or disk, not its vCPUs). Post-copy is not allowed for this"
            f" task, so nothing left can make the copy converge: Ferry stops now rather than"
            f" at the deadline in {max(0.0, deadline - (now - state.started_at)):.0f} s."
            f" The server keeps running on the source; allow post-copy, or move it when it"
            f" is quieter."))
    if now - state.started_at >= deadline:
        return Abort(reason="deadline", message=(
            f"Aborted: the migration did not complete within its deadline of"
            f" {deadline:.0f} s ({settings.completion_timeout_per_gib_s:g} s per GiB of"
            f" {stats.data_total / GIB:.2f} GiB); the server keeps running on the source."))
    if now - state.progress_at >= settings.progress_timeout_s:
        return Abort(reason="stall", message=(
            f"Aborted: no progress for {now - state.progress_at:.0f} s (the data left"
            f" never dropped below {state.lowest_remaining / MIB:.0f} MiB); the server"
            " keeps running on the source."))
    return None


def _nothing_left(state: LadderState, stats: JobStats, settings: LadderSettings) -> bool:
    """True once post-copy is not allowed, QEMU's throttle has been at THROTTLE_MAX for a
    full pass (it only changes between passes), and the guest is still beyond the target
    downtime's reach on HOPELESS_POLLS polls in a row since."""
    if settings.postcopy or not stats.ram_phase or stats.auto_converge_throttle < THROTTLE_MAX:
        state.most_throttle_pass, state.spent_polls = None, 0
        return False
    if state.most_throttle_pass is None:
        state.most_throttle_pass = stats.memory_iteration
    if stats.memory_iteration <= state.most_throttle_pass:
        return False
    state.spent_polls = state.spent_polls + 1 if _beyond_target(stats, settings) else 0
    return state.spent_polls >= HOPELESS_POLLS


def _overdue_in_postcopy(state: LadderState, stats: JobStats, now: float,
                         settings: LadderSettings) -> list[Action]:
    """Note once that a deadline passed during post-copy, which is never aborted."""
    overdue = (now - state.started_at >= completion_deadline_s(settings, stats.data_total)
               or now - state.progress_at >= settings.progress_timeout_s)
    if not overdue or state.overdue_noted:
        return []
    state.overdue_noted = True
    return [Note(kind="postcopy-overdue", message=(
        "The migration is past its deadline but in post-copy: aborting now would lose"
        " the guest's memory, so Ferry lets post-copy finish."))]


def _convergence_signal(state: LadderState, stats: JobStats,
                        schedule: list[tuple[float, int]]) -> list[Action]:
    """Raise or clear the "will not converge at current settings" flag."""
    # Judge only with a full pass behind us and bytes moving: the first pass
    # always looks hopeless and a poll between passes can read 0 B/s.
    if not stats.ram_phase or stats.memory_iteration < 2 or stats.memory_bps <= 0:
        return []
    downtime = schedule[max(state.downtime_step, 0)][1]
    verdict = judge_convergence(stats.memory_dirty_rate_bps, stats.memory_bps,
                                stats.memory_remaining, downtime)
    if not verdict.converges and not state.not_converging:
        state.not_converging = True
        return [WillNotConverge(ratio=verdict.ratio, message=verdict.reason)]
    if verdict.converges and state.not_converging and verdict.ratio < CONVERGING_AGAIN_RATIO:
        state.not_converging = False
        return [Note(kind="converging", message=(
            f"The migration converges again: the guest now dirties {verdict.ratio:.0%}"
            " of what the link carries."))]
    return []


def _beyond_target(stats: JobStats, settings: LadderSettings) -> bool:
    """True when even the target downtime cannot make this sample's migration converge: the
    guest dirties at least as fast as the link carries, or would need more than max_passes
    passes at the target (a sample without bytes moving says nothing)."""
    if stats.memory_bps <= 0:
        return False
    return not judge_convergence(stats.memory_dirty_rate_bps, stats.memory_bps,
                                 stats.memory_remaining, settings.downtime_target_ms,
                                 settings.max_passes).converges


def _jump(state: LadderState, stats: JobStats, now: float, settings: LadderSettings,
          top: int) -> list[Action]:
    """Skip the downtime steps of a guest none of them can help: post-copy now when the task
    allows it, else the target downtime now and auto-converge's window from now."""
    state.jumped = True
    state.progress_at = now
    why = (f"the guest dirties {stats.memory_dirty_rate_bps / MIB:.0f} MiB/s and the link"
           f" carries {stats.memory_bps / MIB:.0f} MiB/s, so no allowed downtime up to"
           f" {settings.downtime_target_ms} ms lets the copy converge")
    if settings.postcopy and stats.ram_phase:
        state.postcopy_at = now
        return [StartPostCopy(message=(
            f"Switched to post-copy after {stats.memory_iteration - 1} full pass(es): {why}."
            f" The guest now runs on the destination and fetches the"
            f" {stats.memory_remaining / MIB:.0f} MiB still on the source on demand."))]
    state.downtime_step, state.top_reached_at, state.auto_converge_at = top, now, now
    raised = SetDowntime(downtime_ms=settings.downtime_target_ms, step=top, message=(
        f"Allowed downtime raised to its {settings.downtime_target_ms} ms target at once:"
        f" {why} (the steps in between are skipped)."))
    if not settings.auto_converge:
        return [raised, Note(kind="auto-converge", message=(
            "Auto-converge was not enabled for this migration: that rung is skipped."))]
    window = settings.auto_converge_window_per_gib_s * scale_gib(settings, stats.memory_total)
    throttle = (f"throttling the vCPUs by {stats.auto_converge_throttle} % now"
                if stats.auto_converge_throttle else "not throttling yet")
    return [raised, Note(kind="auto-converge", message=(
        f"Auto-converge ({throttle}) gets {window:.0f} s from now to slow the guest down."))]


def _climb(state: LadderState, stats: JobStats, now: float, settings: LadderSettings,
           schedule: list[tuple[float, int]]) -> list[Action]:
    """Take the next due rung of the ladder, if any."""
    if state.ram_phase_at is None or stats.memory_iteration < 2:
        return []
    in_ram = now - state.ram_phase_at
    top = len(schedule) - 1
    if not state.jumped and state.auto_converge_at is None:
        state.hopeless_polls = state.hopeless_polls + 1 if _beyond_target(stats, settings) else 0
        if state.hopeless_polls >= HOPELESS_POLLS:
            return _jump(state, stats, now, settings, top)
    if state.downtime_step < top:
        due = max(i for i, (at, _) in enumerate(schedule) if at <= in_ram)
        if due <= state.downtime_step:
            return []
        state.downtime_step = due
        state.progress_at = now
        ms = schedule[due][1]
        if due == top:
            state.top_reached_at = now
        return [SetDowntime(downtime_ms=ms, step=due, message=(
            f"Allowed downtime raised to {ms} ms (step {due} of {top}): after"
            f" {in_ram:.0f} s of memory copy the guest is in pass {stats.memory_iteration}"
            f" with {stats.memory_remaining / MIB:.0f} MiB left."))]

    scale = scale_gib(settings, stats.memory_total)
    if state.auto_converge_at is None:
        state.auto_converge_at = now
        if settings.auto_converge:
            window = settings.auto_converge_window_per_gib_s * scale
            throttle = (f"throttling the vCPUs by {stats.auto_converge_throttle} % now"
                        if stats.auto_converge_throttle else "not throttling yet")
            return [Note(kind="auto-converge", message=(
                f"Allowed downtime is at its {settings.downtime_target_ms} ms target and"
                f" the migration still runs: auto-converge ({throttle}) gets"
                f" {window:.0f} s to slow the guest down."))]
        return [Note(kind="auto-converge", message=(
            "Auto-converge was not enabled for this migration: that rung is skipped."))]

    wait = (settings.auto_converge_window_per_gib_s if settings.auto_converge
            else settings.step_delay_per_gib_s) * scale
    if now - state.auto_converge_at < wait:
        return []
    if settings.postcopy and stats.ram_phase:
        state.postcopy_at = now
        state.progress_at = now
        return [StartPostCopy(message=(
            "Switched to post-copy: the guest now runs on the destination and fetches"
            f" the {stats.memory_remaining / MIB:.0f} MiB still on the source on demand."))]
    if not settings.postcopy and not state.postcopy_refused_noted:
        state.postcopy_refused_noted = True
        deadline = completion_deadline_s(settings, stats.data_total)
        left = max(0.0, deadline - (now - state.started_at))
        return [Note(kind="postcopy-not-allowed", message=(
            "Post-copy is not allowed for this task: the migration goes on until it"
            f" converges or is aborted, at its deadline in {left:.0f} s or sooner once QEMU's"
            " throttle is at its most and the copy still cannot converge."))]
    return []
