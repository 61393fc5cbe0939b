"""ETA and convergence from the pre-copy model, with worked numbers."""

import math
from dataclasses import replace

import pytest

from app.services.estimation import (
    GIB,
    MIB,
    estimate_migration,
    judge_convergence,
    live_estimate,
    passes_needed,
)
from app.services.ladder import JobStats


def test_it_estimates_a_converging_migration_disks_then_memory_passes():
    # 1 GiB RAM + 1 GiB disk at 100 MiB/s, 25 MiB/s dirtied: lambda 0.25,
    # threshold 100 MiB/s x 0.3 s = 30 MiB; passes 1024, 256, 64, 16 MiB.
    e = estimate_migration(GIB, GIB, 100 * MIB, 25 * MIB, downtime_ms=300)
    assert e.converges and e.passes == 3
    # 1 s setup + 10.24 s disk + 13.6 s memory (1360 MiB) + 0.05 s resume
    assert e.seconds == pytest.approx(24.89)
    assert e.expected_downtime_ms == pytest.approx(210.0)  # 16 MiB / R + 50 ms
    assert e.low < e.seconds < e.high
    # low: R +25 %, D -50 % -> lambda 0.1: 1024, 102.4, 10.24 MiB (n = 2)
    assert e.low == pytest.approx(1 + 1024 / 125 + 1136.64 / 125 + 0.05)


def test_it_makes_an_idle_guest_faster_with_touched_memory():
    # Only 128 MiB touched of 1 GiB, nothing dirtied: one pass of 128 MiB.
    e = estimate_migration(GIB, 0, 100 * MIB, 0, touched_memory_bytes=128 * MIB)
    assert e.seconds == pytest.approx(1 + 1.28 + 0.05)
    assert e.passes == 1 and e.converges
    # The high end does not trust the guess: all 1 GiB at 75 MiB/s.
    assert e.high == pytest.approx(1 + 1024 / 75 + 0.05)
    plain = estimate_migration(GIB, 0, 100 * MIB, 0)
    assert plain.seconds == pytest.approx(1 + 10.24 + 0.05)


def test_it_says_a_dirty_rate_above_bandwidth_never_converges():
    # lambda = 1.5: every pass resends the whole 1 GiB (the dirty set saturates).
    e = estimate_migration(GIB, 0, 100 * MIB, 150 * MIB, max_passes=30)
    assert not e.converges
    assert e.passes == 30
    assert e.seconds == pytest.approx(1 + 31 * 10.24 + 0.05)
    assert e.expected_downtime_ms == pytest.approx(10240 + 50)
    assert "will not converge at current settings" in e.reason


def test_it_treats_lambda_of_exactly_one_as_not_converging():
    verdict = judge_convergence(100 * MIB, 100 * MIB)
    assert not verdict.converges and verdict.ratio == 1.0


def test_it_flags_a_converging_ratio_that_needs_too_many_passes():
    # lambda 0.9 from 1 GiB down to 30 MiB: ceil(log(30/1024)/log(0.9)) = 34 passes.
    assert passes_needed(GIB, 30 * MIB, 0.9) == 34
    assert not estimate_migration(GIB, 0, 100 * MIB, 90 * MIB, max_passes=30).converges
    assert estimate_migration(GIB, 0, 100 * MIB, 90 * MIB, max_passes=40).converges


def test_it_warns_when_only_the_pessimistic_band_fails_to_converge():
    # lambda 0.8 converges; +50 % dirty and -25 % throughput gives lambda 1.6.
    e = estimate_migration(GIB, 0, 100 * MIB, 80 * MIB)
    assert e.converges
    assert "pessimistic end" in e.reason


def test_it_gives_no_estimate_without_throughput():
    e = estimate_migration(GIB, GIB, 0, 0)
    assert math.isinf(e.seconds) and not e.converges


def test_it_judges_convergence_from_remaining_and_downtime():
    assert judge_convergence(10 * MIB, 100 * MIB, 512 * MIB, 300).converges
    assert not judge_convergence(99 * MIB, 100 * MIB, 4 * GIB, 10, max_passes=30).converges
    assert not judge_convergence(10 * MIB, 0).converges


def sample(t_ms, processed, **kw):
    """A jobStats sample at t_ms with data_processed bytes so far."""
    return JobStats(time_elapsed_ms=t_ms, data_processed=processed, **kw)


def test_it_reestimates_live_during_the_disk_copy():
    # 200 MiB/s measured; 400 MiB of disk then all 256 MiB of memory to go.
    common = dict(disk_remaining=400 * MIB, memory_total=256 * MIB)
    e = live_estimate([sample(0, 0, **common), sample(1000, 200 * MIB, **common)])
    assert e.seconds == pytest.approx(2 + 1.28 + 0.05)
    assert e.low < e.seconds < e.high  # at least +-10 %


def test_it_reestimates_live_in_the_ram_phase_with_a_band_from_the_samples():
    ram = dict(memory_total=GIB, memory_processed=GIB, memory_iteration=2,
               memory_remaining=200 * MIB, memory_dirty_rate_bps=0)
    series = [sample(0, 0, **ram), sample(1000, 100 * MIB, **ram),
              sample(2000, 400 * MIB, **ram)]
    e = live_estimate(series)
    assert e.seconds == pytest.approx(200 / 200 + 0.05)  # 400 MiB in 2 s
    assert e.low == pytest.approx(200 / 300 + 0.05)  # fastest interval
    assert e.high == pytest.approx(200 / 100 + 0.05)  # slowest interval


def test_it_reports_non_convergence_live():
    ram = dict(memory_total=GIB, memory_processed=GIB, memory_iteration=5,
               memory_remaining=500 * MIB, memory_dirty_rate_bps=300 * MIB)
    e = live_estimate([sample(0, 0, **ram), sample(1000, 100 * MIB, **ram)])
    assert not e.converges
    assert "will not converge at current settings" in e.reason


def test_it_needs_two_samples_and_moving_data_for_a_live_estimate():
    assert live_estimate([sample(0, 0)]) is None
    stuck = live_estimate([sample(0, 5), sample(1000, 5)])
    assert math.isinf(stuck.seconds) and not stuck.converges


def test_it_measures_the_ram_phase_rate_without_the_disk_copy_before_it():
    # A lab move on a 200 Mbit/s link (virsh domjobinfo every 0.5 s): the disk copy ends with
    # ~1 GiB of zeros counted in half a second, then memory goes at ~22 MiB/s. The RAM
    # phase's estimate must come from the RAM phase: 205 MiB left at ~22 MiB/s is about 9 s,
    # where the disk copy's zeros in the same window made it 0.6 s (bench link_eta: every
    # estimate at 25 % was short by 23-58 %).
    disk = dict(memory_total=257 * MIB, disk_remaining=980 * MIB)
    ram = dict(memory_total=257 * MIB, memory_iteration=1)
    series = [sample(729, 16 * MIB, **disk), sample(1253, 44 * MIB, **disk),
              sample(1775, 1033 * MIB, memory_processed=9 * MIB, memory_remaining=239 * MIB,
                     **ram),
              sample(2302, 1045 * MIB, memory_processed=21 * MIB, memory_remaining=225 * MIB,
                     **ram),
              sample(2832, 1057 * MIB, memory_processed=33 * MIB, memory_remaining=205 * MIB,
                     **ram)]
    e = live_estimate(series)
    rate = (1057 - 1033) * MIB / 1.057  # the RAM phase's own samples
    assert e.seconds == pytest.approx(205 * MIB / rate + 0.05)
    assert 8 < e.seconds < 10
    # Right after the switch a single RAM sample has no interval: libvirt's own figure, and
    # without one the link's measured rate.
    first = live_estimate(series[:2] + [replace(series[2], memory_bps=22 * MIB)])
    assert first.seconds == pytest.approx(239 / 22 + 0.05, rel=0.01)
    linked = live_estimate(series[:3], link_bps=20 * MIB)
    assert linked.seconds == pytest.approx(239 / 20 + 0.05, rel=0.01)


def test_it_counts_the_first_pass_zero_pages_as_nearly_free():
    # First pass of an idle 256 MiB guest: of the pages scanned so far three in four were
    # zero (QEMU sends a few bytes for each), so of the 200 MiB left about 50 MiB will be
    # sent, not 200 (bench link_eta: +75 % at 25 % for this guest). The share found so far
    # counts as if a sixteenth of the guest's pages (4096) had been found full: 47 MiB scanned
    # make (3000 + 4096) / (12000 + 4096) of the 200 MiB, 88 MiB; 188 MiB scanned, 62 MiB.
    ram = dict(memory_total=256 * MIB, memory_iteration=1, memory_constant=9000,
               memory_normal=3000, memory_remaining=200 * MIB)
    series = [sample(1000, 0, memory_processed=MIB, **ram),
              sample(2000, 20 * MIB, memory_processed=21 * MIB, **ram)]
    e = live_estimate(series)
    assert e.seconds == pytest.approx(200 * 7096 / 16096 / 20 + 0.05)
    more = [replace(s, memory_constant=36000, memory_normal=12000) for s in series]
    assert live_estimate(more).seconds == pytest.approx(200 * 16096 / 52096 / 20 + 0.05)
    # The preflight read that the guest touched half of its memory: the prior share is a half.
    half = live_estimate(series, memory_bytes=128 * MIB)
    assert half.seconds == pytest.approx(200 * (3000 + 2048) / 16096 / 20 + 0.05)
    # From the second pass on, what is left is the dirtied set: it is sent in full.
    later = [replace(s, memory_iteration=2) for s in series]
    assert live_estimate(later).seconds == pytest.approx(200 / 20 + 0.05)
    # libvirt reads the counters from jobStats' memory_constant / memory_normal (pages).
    stats = JobStats.from_libvirt({"type": 2, "memory_constant": 9000, "memory_normal": 3000})
    assert (stats.memory_constant, stats.memory_normal) == (9000, 3000)


def test_during_the_disk_copy_memory_is_estimated_at_no_more_than_the_link_carries():
    # The disk copy's zero blocks count as processed at hundreds of MiB/s (bench link_eta: at
    # 80 %, still copying the disk, the estimate said 0.2 s where 11.9 s were left). Memory has
    # not started: it will go at most at the link's measured throughput.
    disk = dict(memory_total=256 * MIB, disk_remaining=100 * MIB)
    series = [sample(1000, 100 * MIB, **disk), sample(1500, 600 * MIB, **disk)]
    e = live_estimate(series, link_bps=23 * MIB)
    assert e.seconds == pytest.approx(100 / 1000 + 256 / 23 + 0.05)
    assert live_estimate(series).seconds == pytest.approx(100 / 1000 + 256 / 1000 + 0.05)
    # In the RAM phase the phase's own rate is the measure (it is what crosses the link).
    ram = [replace(s, memory_processed=s.data_processed, memory_remaining=100 * MIB,
                   memory_iteration=2, disk_remaining=0) for s in series]
    assert live_estimate(ram, link_bps=23 * MIB).seconds == pytest.approx(100 / 1000 + 0.05)


def test_during_the_disk_copy_the_disks_data_and_the_memory_go_at_the_links_rate():
    # A lab move's first samples (bench link_eta, 200 Mbit/s): libvirt's set-up, then 1 GiB
    # of mostly sparse disk counted at any speed. The disk copy's own rate said 50 s were left
    # of a 7 s move. Knowing the disks hold 8 MiB of data, what is left is their share still
    # to copy and then all of the memory, at the link's measured rate.
    disk = dict(memory_total=128 * MIB, disk_total=GIB)
    series = [sample(0, 0, disk_remaining=GIB, **disk),
              sample(500, 0, disk_remaining=GIB, **disk),
              sample(1000, 20 * MIB, disk_remaining=GIB - 20 * MIB, **disk)]
    e = live_estimate(series, link_bps=24 * MIB, disk_data_bytes=8 * MIB)
    left = 8 * (GIB - 20 * MIB) / GIB + 128
    assert e.seconds == pytest.approx(left / 24 + 0.05)
    assert e.low < e.seconds < e.high
    assert live_estimate(series, link_bps=24 * MIB).seconds > 40  # the disk copy's own rate
    # libvirt's own memory total is 0 until the RAM phase: the guest's memory stands in.
    unknown = [replace(s, memory_total=0) for s in series]
    assert live_estimate(unknown, link_bps=24 * MIB, disk_data_bytes=8 * MIB,
                         memory_bytes=128 * MIB).seconds == pytest.approx(e.seconds)


def first_pass_at_20_mib_s():
    """Two samples of a first memory pass, 200 MiB of a 256 MiB guest left, 20 MiB/s."""
    ram = dict(memory_total=256 * MIB, memory_iteration=1, memory_remaining=200 * MIB,
               memory_constant=0, memory_normal=5000)
    return [sample(1000, 0, memory_processed=MIB, **ram),
            sample(2000, 20 * MIB, memory_processed=21 * MIB, **ram)]


def test_until_libvirt_measures_the_dirty_rate_the_sampled_one_stands_in():
    # libvirt measures how fast a guest writes only from the second memory pass on; until
    # then the estimate assumed it wrote nothing, even when the preflight had sampled it.
    series = first_pass_at_20_mib_s()
    blind, told = live_estimate(series), live_estimate(series, dirty_bps=8 * MIB)
    # lambda = 8 / 20: each pass resends 0.4 of the one before, 1 / (1 - 0.4) of it in all.
    assert told.seconds - 0.05 == pytest.approx((blind.seconds - 0.05) / 0.6, rel=0.05)
    assert told.converges
    # From the second pass on libvirt's own figure counts, even when it is nothing.
    later = [replace(s, memory_iteration=2, memory_dirty_rate_bps=2 * MIB) for s in series]
    assert live_estimate(later, dirty_bps=8 * MIB).seconds == pytest.approx(
        live_estimate(later).seconds)
    idle = [replace(s, memory_iteration=2) for s in series]
    assert live_estimate(idle, dirty_bps=8 * MIB).seconds == pytest.approx(
        live_estimate(idle).seconds)
    # A guest the preflight saw write faster than the link carries: it will not converge.
    assert not live_estimate(series, dirty_bps=30 * MIB).converges


def test_what_the_guest_wrote_to_last_time_bounds_every_pass_after_the_first():
    # A guest rewriting 32 MiB at 8 MiB/s resends at most those 32 MiB a pass, not 0.4 of the
    # 200 MiB of the first: with the set its last move found dirty the estimate is shorter,
    # still longer than an idle guest's; the band's slow end keeps the whole memory; and once
    # libvirt measures this move (second pass) its own figures count instead.
    series = first_pass_at_20_mib_s()
    idle, rate_only = live_estimate(series), live_estimate(series, dirty_bps=8 * MIB)
    bounded = live_estimate(series, dirty_bps=8 * MIB, dirty_set_bytes=32 * MIB)
    assert idle.seconds < bounded.seconds < rate_only.seconds
    # 200 MiB, then 32, 12.8 and 5.12 MiB (within 300 ms at 20 MiB/s), all at 20 MiB/s
    assert bounded.seconds - 0.05 == pytest.approx((200 + 32 + 12.8 + 5.12) / 20)
    assert bounded.high == pytest.approx(live_estimate(series, dirty_bps=8 * MIB).high)
    later = [replace(s, memory_iteration=2, memory_dirty_rate_bps=8 * MIB) for s in series]
    assert live_estimate(later, dirty_set_bytes=32 * MIB).seconds == pytest.approx(
        live_estimate(later).seconds)
    pre = estimate_migration(256 * MIB, 0, 20 * MIB, 8 * MIB)
    assert estimate_migration(256 * MIB, 0, 20 * MIB, 8 * MIB,
                              dirty_set_bytes=32 * MIB).seconds < pre.seconds
