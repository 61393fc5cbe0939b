"""How long a migration will take, with a band, and whether it converges.

The model is the pre-copy model of REFERENCE.md (Liu et al., HPDC 2011;
Akoush et al., MASCOTS 2010): disks first (non-shared storage), then memory
passes. With memory V, bandwidth R, dirty rate D and lambda = D / R, pass i
sends V * lambda**i; QEMU stops the guest once what is left fits in the
allowed downtime (V_threshold = R * downtime). Everything here is pure: the
callers measure (throughput probe, libvirt dirty-rate calculation, jobStats)
and pass plain numbers in.

Units: bytes, bytes per second, seconds; downtime in milliseconds as libvirt
uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # only for annotations: ladder imports this module
    from app.services.ladder import JobStats

GIB = 1024 ** 3
MIB = 1024 ** 2

DEFAULT_DOWNTIME_MS = 300
DEFAULT_MAX_PASSES = 30
# Setup (Prepare on the destination, connection, device state) and resume on
# the destination: the lab measured 3.3 s for 256 MiB + ~0.6 GiB of data at
# ~5 Gbit/s, about 1 s more than the bytes alone explain.
DEFAULT_SETUP_S = 1.0
DEFAULT_RESUME_MS = 50.0
# Pre-start inputs are single samples: the probe is a few seconds of zeros
# and the dirty rate a one-second sample, so the band is wide on purpose.
THROUGHPUT_ERROR = 0.25
DIRTY_RATE_ERROR = 0.5
# Live: the band comes from the spread of recent samples, but never narrower.
MIN_LIVE_SPREAD = 0.10


@dataclass(frozen=True)
class Estimate:
    """A time estimate with its band; `seconds` is still to go from the sample."""

    seconds: float
    low: float
    high: float
    expected_downtime_ms: float
    converges: bool
    passes: int
    reason: str


@dataclass(frozen=True)
class Convergence:
    """Whether pre-copy converges at the current settings, and why not."""

    converges: bool
    ratio: float  # lambda = dirty rate / bandwidth
    reason: str


@dataclass(frozen=True)
class _Passes:
    seconds: float  # memory part only
    downtime_ms: float
    passes: int
    converges: bool


def dirty_ratio(dirty_rate_bps: float, bandwidth_bps: float) -> float:
    """Return lambda = dirty rate / bandwidth (inf when nothing moves).

    >>> dirty_ratio(50 * MIB, 100 * MIB)
    0.5
    >>> dirty_ratio(0, 0)
    inf
    """
    if bandwidth_bps <= 0:
        return math.inf
    return max(dirty_rate_bps, 0) / bandwidth_bps


def passes_needed(memory_bytes: float, threshold_bytes: float, ratio: float) -> int:
    """Return the passes after the first until what is left fits the threshold.

    n = ceil(log_lambda(V_threshold / V)); 0 when V already fits; 1 when the
    guest dirties nothing (lambda = 0); inf-like (a large int) when lambda >= 1.

    >>> passes_needed(1024, 2048, 0.5)
    0
    >>> passes_needed(1024 * MIB, 30 * MIB, 0.5)  # 1024 -> 512 ... 32 -> 16
    6
    >>> passes_needed(1024, 10, 0.0)
    1
    """
    if memory_bytes <= threshold_bytes:
        return 0
    if ratio <= 0:
        return 1
    if ratio >= 1 or threshold_bytes <= 0:
        return 10 ** 9
    n = math.log(threshold_bytes / memory_bytes) / math.log(ratio)
    # ceil with a tolerance so that an exact power does not round up
    return max(1, math.ceil(n - 1e-9))


def _memory_passes(memory_bytes: float, bandwidth_bps: float, dirty_bps: float,
                   downtime_ms: float, max_passes: int, resume_ms: float,
                   cap_bytes: float) -> _Passes:
    """Run the pre-copy model over the memory part (see `estimate_migration`)."""
    ratio = dirty_ratio(dirty_bps, bandwidth_bps)
    threshold = bandwidth_bps * downtime_ms / 1000.0
    # A pass cannot resend more than the guest writes to (cap_bytes: at most its whole
    # memory): with lambda >= 1 the dirty set saturates, it does not grow without end, and
    # a set smaller than the first pass shortens every pass after it.
    # min(ratio, 1e3): beyond that every pass is capped anyway; avoids overflow
    second = min(memory_bytes * min(ratio, 1e3), cap_bytes)
    if memory_bytes <= threshold:
        needed = 0
    else:
        needed = 1 if second <= threshold else 1 + passes_needed(second, threshold, ratio)
    n = min(needed, max_passes)
    sent = last = memory_bytes
    for _ in range(n):
        last = min(last * min(ratio, 1e3), cap_bytes)
        sent += last
    downtime = last / bandwidth_bps * 1000.0 + resume_ms
    return _Passes(
        seconds=sent / bandwidth_bps,
        downtime_ms=downtime,
        passes=n,
        converges=needed <= max_passes,
    )


def estimate_migration(memory_bytes: int, disk_bytes: int, throughput_bps: float,
                       dirty_rate_bps: float,
                       downtime_ms: float = DEFAULT_DOWNTIME_MS,
                       max_passes: int = DEFAULT_MAX_PASSES,
                       touched_memory_bytes: Optional[int] = None,
                       setup_s: float = DEFAULT_SETUP_S,
                       resume_ms: float = DEFAULT_RESUME_MS,
                       dirty_set_bytes: Optional[float] = None) -> Estimate:
    """Estimate a live migration before it starts, with a band.

    Disks (allocated bytes) go first at the measured throughput R, then the
    memory passes. QEMU skips zero pages, so the first pass of an idle guest
    sends only its touched memory: pass `touched_memory_bytes` when known
    (the central and low values use it, the high value assumes all memory).

    Worked example: 1 GiB of memory, 1 GiB of disk, 100 MiB/s, 25 MiB/s
    dirtied (lambda = 0.25), 300 ms downtime: threshold 30 MiB; memory passes
    1024, 256, 64, 16 MiB (n = 3), total 1360 MiB; time = 1 s setup
    + 10.24 s disk + 13.6 s memory + 0.05 s resume = 24.89 s; downtime
    = 16 MiB / R + 50 ms = 210 ms.

    >>> e = estimate_migration(GIB, GIB, 100 * MIB, 25 * MIB)
    >>> round(e.seconds, 2), e.passes, round(e.expected_downtime_ms), e.converges
    (24.89, 3, 210, True)

    With lambda >= 1 the model never converges: `converges` is False and the
    time shown is that of `max_passes` passes (each capped at the memory
    size), which is when Ferry's ladder must throttle, switch or abort.

    A guest rewrites the same pages: what a pass resends is at most the set it
    writes to. `dirty_set_bytes`, when known (the most a former move found dirty
    after a pass), caps every pass after the first; the pessimistic end of the
    band does not use it. In the example a 64 MiB set: 1024 + 64 + 16 MiB.

    >>> round(estimate_migration(GIB, GIB, 100 * MIB, 25 * MIB,
    ...                          dirty_set_bytes=64 * MIB).seconds, 2)
    22.33
    """
    if throughput_bps <= 0:
        return Estimate(math.inf, math.inf, math.inf, math.inf, False, 0,
                        "No throughput was measured between the nodes: no estimate.")
    touched = memory_bytes if touched_memory_bytes is None else min(
        touched_memory_bytes, memory_bytes)

    cap = min(memory_bytes, dirty_set_bytes) if dirty_set_bytes else memory_bytes

    def total(rate: float, dirty: float, first_pass: float, cap_bytes: float = cap
              ) -> tuple[float, _Passes]:
        mem = _memory_passes(first_pass, rate, dirty, downtime_ms, max_passes,
                             resume_ms, cap_bytes=cap_bytes)
        return setup_s + disk_bytes / rate + mem.seconds + resume_ms / 1000.0, mem

    seconds, mem = total(throughput_bps, dirty_rate_bps, touched)
    low, _ = total(throughput_bps * (1 + THROUGHPUT_ERROR),
                   dirty_rate_bps * (1 - DIRTY_RATE_ERROR), touched)
    high, worst = total(throughput_bps * (1 - THROUGHPUT_ERROR),
                        dirty_rate_bps * (1 + DIRTY_RATE_ERROR), memory_bytes, memory_bytes)
    verdict = judge_convergence(dirty_rate_bps, throughput_bps, touched,
                                downtime_ms, max_passes)
    reason = verdict.reason
    if verdict.converges and not worst.converges:
        reason += (" At the pessimistic end of the band (throughput -25 %, dirty"
                   " rate +50 %) it would not converge.")
    return _estimate(seconds, low, high, mem, verdict, reason)


def judge_convergence(dirty_rate_bps: float, bandwidth_bps: float,
                      remaining_bytes: Optional[float] = None,
                      downtime_ms: float = DEFAULT_DOWNTIME_MS,
                      max_passes: int = DEFAULT_MAX_PASSES) -> Convergence:
    """Judge whether pre-copy converges at the current settings.

    It does not when the guest dirties memory at least as fast as it is sent
    (lambda >= 1), or when, given what remains, it would need more than
    `max_passes` passes to fit in the allowed downtime.

    >>> judge_convergence(120 * MIB, 100 * MIB).converges
    False
    >>> judge_convergence(10 * MIB, 100 * MIB, 512 * MIB, 300).converges
    True
    >>> judge_convergence(99 * MIB, 100 * MIB, 4 * GIB, 10, 30).converges
    False
    """
    ratio = dirty_ratio(dirty_rate_bps, bandwidth_bps)
    if math.isinf(ratio):
        return Convergence(False, ratio, "No memory is being transferred.")
    if ratio >= 1:
        return Convergence(False, ratio, (
            f"The guest dirties memory at {_mib(dirty_rate_bps)} MiB/s, faster than"
            f" the {_mib(bandwidth_bps)} MiB/s the link carries: the migration"
            " will not converge at current settings."))
    if remaining_bytes is not None:
        threshold = bandwidth_bps * downtime_ms / 1000.0
        n = passes_needed(remaining_bytes, threshold, ratio)
        if n > max_passes:
            return Convergence(False, ratio, (
                f"With {_mib(remaining_bytes)} MiB left, {_mib(dirty_rate_bps)} MiB/s"
                f" dirtied and {_mib(bandwidth_bps)} MiB/s sent, fitting into"
                f" {downtime_ms:g} ms of downtime would take {n} passes (more"
                f" than {max_passes}): the migration will not converge at"
                " current settings."))
    return Convergence(True, ratio, (
        f"The guest dirties {ratio:.0%} of what the link carries: pre-copy"
        " converges."))


def live_estimate(series: Sequence["JobStats"],
                  downtime_ms: float = DEFAULT_DOWNTIME_MS,
                  max_passes: int = DEFAULT_MAX_PASSES,
                  resume_ms: float = DEFAULT_RESUME_MS,
                  link_bps: Optional[float] = None,
                  disk_data_bytes: Optional[float] = None,
                  memory_bytes: Optional[float] = None,
                  dirty_bps: Optional[float] = None,
                  dirty_set_bytes: Optional[float] = None) -> Optional[Estimate]:
    """Re-estimate the time still to go from recent jobStats samples (oldest first).

    Bandwidth is measured from data_processed over the samples of the current
    phase (disk copy or RAM; libvirt's memory_bps is zero during the disk copy,
    and stands in for the RAM phase's first sample); the band comes from the slowest
    and fastest interval, never narrower than +-10 %. During the disk copy the
    memory is still to come in full; in the RAM phase the current pass's
    remaining bytes start the model, in the first pass scaled by the share of
    full pages among those scanned (zero pages cost a few bytes each). During
    the disk copy, whose zero blocks count as processed at any speed, the
    memory to come is sent at no more than `link_bps` (the throughput measured
    between the nodes) when given. With `disk_data_bytes` (the data the disks hold, their
    allocation) and `link_bps` both known, the disk copy's own rate is not used at all: its
    first samples include libvirt's set-up (a 7 s move was once estimated at 50 s there) and
    its zero blocks then count at any speed, so what is left of the disks' data (their share
    still to copy) and then the memory go at the link's rate. `memory_bytes` is what the
    guest touched, when the preflight could read it, else all of its memory: the memory to
    come during the disk copy (libvirt's memory total is 0 until the RAM phase), and early in
    the first pass the share of full pages expected. libvirt measures how fast the guest
    dirties its memory only from the second memory pass on: until then `dirty_bps`, the rate
    the preflight sampled (or learned from the server's last move), stands in, and
    `dirty_set_bytes`, the most that move found dirty after a pass, caps the passes after the
    first (not at the band's slow end). Returns None with fewer than two samples.

    Worked example: two samples 1 s apart, 100 MiB processed in between, RAM
    phase, 200 MiB remaining, no dirtying: 200 MiB / 100 MiB/s = 2 s (+ 50 ms
    resume).

    >>> from app.services.ladder import JobStats
    >>> a = JobStats(time_elapsed_ms=1000, data_processed=0, memory_total=GIB,
    ...              memory_processed=MIB, memory_remaining=300 * MIB, memory_iteration=1)
    >>> b = JobStats(time_elapsed_ms=2000, data_processed=100 * MIB, memory_total=GIB,
    ...              memory_processed=101 * MIB, memory_remaining=200 * MIB, memory_iteration=1)
    >>> round(live_estimate([a, b]).seconds, 2)
    2.05
    """
    if len(series) < 2:
        return None
    last = series[-1]
    series, rate, rates = _phase_rate(series, link_bps)
    disk_left, memory_left = last.disk_remaining, _memory_left(last, memory_bytes)
    by_link = bool(link_bps and disk_data_bytes is not None and not last.ram_phase)
    if by_link:  # the disk copy: its data share, then the memory, at the link's rate
        rate, rates = float(link_bps), []
        if last.disk_total > 0:
            disk_left = disk_data_bytes * min(1.0, last.disk_remaining / last.disk_total)
    if rate <= 0:
        return Estimate(math.inf, math.inf, math.inf, math.inf, False, 0,
                        "No data moved in the recent samples: no estimate.")
    fast = max(max(rates, default=rate), rate * (1 + MIN_LIVE_SPREAD))
    slow = min(min((r for r in rates if r > 0), default=rate), rate * (1 - MIN_LIVE_SPREAD))
    dirty = sum(s.memory_dirty_rate_bps for s in series) / len(series)
    measured = any(s.memory_iteration > 1 for s in series)
    if not dirty and dirty_bps and not measured:
        dirty = float(dirty_bps)  # libvirt has not measured it yet
    whole = max(last.memory_total, memory_left)
    cap = min(whole, dirty_set_bytes) if dirty_set_bytes and not measured else whole

    def go(r: float, d: float, cap_bytes: float = cap) -> tuple[float, _Passes]:
        memory_rate = min(r, link_bps) if link_bps and not last.ram_phase and not by_link else r
        mem = _memory_passes(memory_left, memory_rate, d, downtime_ms, max_passes,
                             resume_ms, cap_bytes=cap_bytes)
        return disk_left / r + mem.seconds + resume_ms / 1000.0, mem

    seconds, mem = go(rate, dirty)
    low, _ = go(fast, dirty * (1 - MIN_LIVE_SPREAD))
    high, _ = go(slow, dirty * (1 + MIN_LIVE_SPREAD), whole)
    verdict = judge_convergence(dirty, rate, memory_left, downtime_ms, max_passes)
    return _estimate(seconds, low, high, mem, verdict, verdict.reason)


def _phase_rate(series: Sequence["JobStats"], link_bps: Optional[float]
                ) -> tuple[Sequence["JobStats"], float, list[float]]:
    """The samples of the current phase, the rate over them and over each interval.

    The rate is measured within the current phase: the disk copy counts its zero blocks as
    processed (a 1 GiB sparse disk ends with ~1 GiB in half a second), which says nothing
    about how fast memory will go. Right after the switch to RAM, with one sample of it,
    libvirt's own memory bandwidth stands in, and without it the link's measured rate (the
    rate over the disk copy's zero blocks said 0.2 s were left of 6: bench link_eta).
    """
    last = series[-1]
    phase = [s for s in series if s.ram_phase == last.ram_phase]
    if len(phase) >= 2:
        series = phase
    elif last.ram_phase and last.memory_bps > 0:
        series = [last]
    elif last.ram_phase and link_bps:
        return [last], float(link_bps), []
    first = series[0]
    rates = []
    for a, b in zip(series, series[1:]):
        dt = (b.time_elapsed_ms - a.time_elapsed_ms) / 1000.0
        if dt > 0:
            rates.append(max(b.data_processed - a.data_processed, 0) / dt)
    span = (last.time_elapsed_ms - first.time_elapsed_ms) / 1000.0
    rate = (last.data_processed - first.data_processed) / span if span > 0 else 0.0
    return series, rate if rate > 0 else float(last.memory_bps), rates


# Early in the first pass the share of full pages found so far says little (a guest's low
# memory is often all zeros: a move estimated at 0.1 s left, 1.5 s into 7.4 s, bench link_eta):
# the share is taken as if this many of the guest's pages had already been scanned at the
# share the preflight expected (what the guest touched, else all of it), and follows what
# QEMU finds as it scans.
FIRST_PASS_PRIOR = 1 / 16


def _memory_left(last: "JobStats", touched: Optional[float] = None) -> float:
    """The memory still to send, as of the latest sample: during the disk copy what the guest
    `touched` (else all of it: libvirt's memory total, 0 until the RAM phase); in the RAM
    phase what libvirt reports, in the first pass in the proportion of full pages found so far
    (it skips zero pages, a few bytes each; later passes resend dirtied pages, which are not
    zero), that proportion starting from the share touched (FIRST_PASS_PRIOR).

    >>> from app.services.ladder import JobStats
    >>> first = dict(memory_total=128 * MIB, memory_remaining=120 * MIB, memory_iteration=1)
    >>> round(_memory_left(JobStats(memory_constant=2048, **first)) / MIB)  # 8 MiB all zero
    60
    >>> round(_memory_left(JobStats(memory_constant=22528, memory_normal=6144, **first)) / MIB)
    32
    >>> round(_memory_left(JobStats(memory_constant=2048, **first), touched=64 * MIB) / MIB)
    30
    """
    if not last.ram_phase:
        return touched or last.memory_total
    scanned = last.memory_constant + last.memory_normal
    if last.memory_iteration <= 1 and scanned > 0:
        touched_share = min(1.0, touched / last.memory_total) if touched else 1.0
        prior = last.memory_total / last.memory_page_size * FIRST_PASS_PRIOR
        return (last.memory_remaining * (last.memory_normal + prior * touched_share)
                / (scanned + prior))
    return last.memory_remaining


def _estimate(seconds: float, low: float, high: float, mem: _Passes,
              verdict: Convergence, reason: str) -> Estimate:
    """Assemble an Estimate whose band always contains the central value."""
    return Estimate(
        seconds=seconds,
        low=min(low, seconds),
        high=max(high, seconds),
        expected_downtime_ms=mem.downtime_ms,
        converges=mem.converges and verdict.converges,
        passes=mem.passes,
        reason=reason,
    )


def _mib(value: float) -> str:
    """Format bytes (or bytes/s) as whole MiB for a sentence."""
    return f"{value / MIB:.0f}"
