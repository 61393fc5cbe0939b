"""The live-migration ladder's decisions: pure functions, no libvirt."""

from app.services.estimation import GIB, MIB
from app.services.ladder import (
    JOB_COMPLETED,
    Abort,
    JobStats,
    LadderSettings,
    LadderState,
    Note,
    SetDowntime,
    StartPostCopy,
    WillNotConverge,
    completion_deadline_s,
    decide,
    downtime_steps,
    progress_percent,
)

# 1 GiB guest, 1 GiB data: steps 10 s apart, deadline 150 s.
SETTINGS = LadderSettings(downtime_target_ms=300, downtime_steps=3)


def disk_phase(remaining=GIB // 2, **extra):
    """A sample during the disk copy: memory stats still zero."""
    return JobStats(data_total=2 * GIB, data_remaining=remaining + GIB,
                    disk_total=GIB, disk_remaining=remaining, **extra)


def ram_phase(iteration=1, remaining=GIB // 2, dirty=0, bps=100 * MIB, **extra):
    """A sample during the memory passes of a 1 GiB guest (data = memory)."""
    return JobStats(data_total=GIB, data_remaining=remaining, memory_total=GIB,
                    memory_processed=GIB - remaining, memory_remaining=remaining,
                    memory_iteration=iteration, memory_dirty_rate_bps=dirty,
                    memory_bps=bps, **extra)


def kinds(actions):
    """The kinds of a list of actions, for short assertions."""
    return [a.kind for a in actions]


def climb_to_top(state, settings=SETTINGS, start=0.0):
    """Drive a non-converging migration until the downtime target is reached."""
    decide(state, ram_phase(iteration=1), start, settings)
    actions = []
    t = start
    for t in (start + 10, start + 20, start + 30):
        actions += decide(state, ram_phase(iteration=int(t), remaining=GIB // 2 - int(t)),
                          t, settings)
    return actions, t


def test_it_builds_job_stats_from_libvirt_dict():
    stats = JobStats.from_libvirt({
        "type": 2, "time_elapsed": 2500, "data_total": 10, "data_remaining": 4,
        "memory_dirty_rate": 256, "memory_page_size": 16384, "memory_iteration": 3,
        "memory_bps": 1000, "disk_total": 5, "downtime": 42,
        "auto_converge_throttle": 30, "memory_postcopy_requests": 0,
    })
    assert stats.memory_dirty_rate_bps == 256 * 16384
    assert (stats.time_elapsed_ms, stats.downtime_ms, stats.auto_converge_throttle) == (2500, 42, 30)
    assert stats.active
    # Older libvirt omits the page size: x86's 4 KiB is assumed.
    assert JobStats.from_libvirt({"type": 2, "memory_dirty_rate": 10}).memory_dirty_rate_bps == 40960


def test_it_schedules_downtime_steps_like_nova():
    steps = downtime_steps(LadderSettings(), 256 * MIB)
    assert [ms for _, ms in steps] == [30, 57, 84, 111, 138, 165, 192, 219, 246, 273, 300]
    assert [at for at, _ in steps][:3] == [0.0, 10.0, 20.0]  # small guests count as 1 GiB
    assert downtime_steps(LadderSettings(), 4 * GIB)[1][0] == 40.0  # scaled by memory


def test_it_computes_progress_percent_from_data_then_memory():
    assert progress_percent(JobStats(data_total=400, data_remaining=100)) == 75.0
    assert progress_percent(JobStats(memory_total=200, memory_remaining=50)) == 75.0
    assert progress_percent(JobStats(data_total=100, data_remaining=500)) == 0.0


def test_it_sets_the_first_step_and_never_escalates_a_converging_migration():
    state = LadderState()
    first = decide(state, disk_phase(), 0.0, SETTINGS)
    assert first == [SetDowntime(downtime_ms=100, step=0, message=first[0].message)]
    assert "100 ms" in first[0].message
    # The disk copy takes a while, then one pass and done: nothing more.
    actions = []
    for t, stats in [(30.0, disk_phase(remaining=1000)), (31.0, ram_phase(iteration=1)),
                     (40.0, ram_phase(iteration=1, remaining=100 * MIB)),
                     (45.0, JobStats(type=JOB_COMPLETED))]:
        actions += decide(state, stats, t, SETTINGS)
    assert actions == []


def test_it_raises_downtime_on_schedule_only_after_a_full_pass():
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, SETTINGS)
    # 15 s in but still in the first pass: convergence is unknown, no step.
    assert decide(state, ram_phase(iteration=1, remaining=GIB // 3), 15.0, SETTINGS) == []
    step = decide(state, ram_phase(iteration=2, remaining=GIB // 4), 16.0, SETTINGS)
    assert [(a.downtime_ms, a.step) for a in step] == [(166, 1)]
    assert "166 ms (step 1 of 3)" in step[0].message
    # Not due again until 20 s; a late poll jumps to the step that is due.
    assert decide(state, ram_phase(iteration=3, remaining=GIB // 5), 18.0, SETTINGS) == []
    late = decide(state, ram_phase(iteration=9, remaining=GIB // 6), 35.0, SETTINGS)
    assert [(a.downtime_ms, a.step) for a in late] == [(300, 3)]


def test_it_climbs_to_target_then_auto_converge_then_postcopy_when_allowed():
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=3, postcopy=True,
                              auto_converge_window_per_gib_s=20.0)
    state = LadderState()
    actions, t = climb_to_top(state, settings)
    assert [a.downtime_ms for a in actions] == [166, 233, 300]
    rung = decide(state, ram_phase(iteration=40, auto_converge_throttle=40), t + 0.5, settings)
    assert kinds(rung) == ["throttle", "auto-converge"]
    assert "40 %" in rung[1].message and "20 s" in rung[1].message
    assert decide(state, ram_phase(iteration=41), t + 19, settings) == []
    switch = decide(state, ram_phase(iteration=42, remaining=80 * MIB), t + 21, settings)
    assert [type(a) for a in switch] == [StartPostCopy]
    assert "80 MiB" in switch[0].message
    assert state.in_postcopy
    assert decide(state, ram_phase(iteration=43), t + 22, settings) == []  # only once


def test_it_skips_auto_converge_rung_when_not_enabled_and_notes_postcopy_refusal():
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=3, auto_converge=False)
    state = LadderState()
    _, t = climb_to_top(state, settings)
    skipped = decide(state, ram_phase(iteration=50), t + 1, settings)
    assert kinds(skipped) == ["auto-converge"] and "not enabled" in skipped[0].message
    refused = decide(state, ram_phase(iteration=51), t + 12, settings)
    assert kinds(refused) == ["postcopy-not-allowed"]
    assert not any(isinstance(a, StartPostCopy) for a in refused)
    assert decide(state, ram_phase(iteration=52), t + 13, settings) == []  # said once


def test_it_never_starts_postcopy_during_the_disk_copy():
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=3, postcopy=True)
    # A state already at the post-copy rung, fed a sample from the disk phase.
    state = LadderState(started_at=0.0, ram_phase_at=0.0, downtime_step=3,
                        top_reached_at=30.0, auto_converge_at=30.0, progress_at=99.0,
                        lowest_remaining=0)
    actions = decide(state, disk_phase(memory_iteration=5), 100.0, settings)
    assert not any(isinstance(a, StartPostCopy) for a in actions)
    assert not state.in_postcopy


def test_it_aborts_when_no_progress_for_the_stall_timeout():
    settings = LadderSettings(progress_timeout_s=20.0, completion_timeout_per_gib_s=1000)
    state = LadderState()
    decide(state, disk_phase(remaining=GIB // 2), 0.0, settings)
    assert decide(state, disk_phase(remaining=GIB // 2), 19.0, settings) == []
    actions = decide(state, disk_phase(remaining=GIB // 2), 20.0, settings)
    assert [(type(a), a.reason) for a in actions] == [(Abort, "stall")]
    assert "no progress for 20 s" in actions[0].message
    assert "keeps running on the source" in actions[0].message
    assert decide(state, disk_phase(), 21.0, settings) == []  # aborted once


def test_it_counts_a_new_low_of_remaining_data_as_progress():
    settings = LadderSettings(progress_timeout_s=20.0, completion_timeout_per_gib_s=1000)
    state = LadderState()
    actions = []
    for t in range(0, 100, 10):  # slow but steady: never 20 s without a new low
        actions += decide(state, disk_phase(remaining=GIB - t * MIB), float(t), settings)
    assert kinds(actions) == ["downtime"]


def test_it_aborts_at_the_deadline_scaled_by_data_size():
    settings = LadderSettings(completion_timeout_per_gib_s=60.0, min_deadline_s=30.0,
                              progress_timeout_s=10_000)
    assert completion_deadline_s(settings, 2 * GIB) == 120.0
    assert completion_deadline_s(settings, 100 * MIB) == 60.0  # at least 1 GiB
    state = LadderState()
    stats = disk_phase()  # data_total 2 GiB
    decide(state, stats, 0.0, settings)
    assert not any(isinstance(a, Abort) for a in decide(state, stats, 119.0, settings))
    actions = decide(state, stats, 120.0, settings)
    assert [(type(a), a.reason) for a in actions] == [(Abort, "deadline")]
    assert "120 s" in actions[0].message


def test_it_never_aborts_in_postcopy():
    settings = LadderSettings(completion_timeout_per_gib_s=60.0, progress_timeout_s=5.0)
    state = LadderState()
    decide(state, ram_phase(iteration=3), 0.0, settings)
    # libvirt reports post-copy page requests: the guest runs on the destination.
    in_postcopy = ram_phase(iteration=3, postcopy_requests=12)
    decide(state, in_postcopy, 1.0, settings)
    assert state.in_postcopy
    late = decide(state, in_postcopy, 500.0, settings)
    assert kinds(late) == ["postcopy-overdue"]
    assert not any(isinstance(a, Abort) for a in late)
    assert decide(state, in_postcopy, 900.0, settings) == []


def test_it_signals_will_not_converge_when_dirty_rate_exceeds_bandwidth():
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, SETTINGS)
    # First pass: no verdict yet, however fast the guest dirties.
    assert decide(state, ram_phase(iteration=1, dirty=200 * MIB), 1.0, SETTINGS) == []
    signal = decide(state, ram_phase(iteration=2, dirty=150 * MIB, remaining=GIB // 3),
                    2.0, SETTINGS)
    assert [type(a) for a in signal] == [WillNotConverge]
    assert signal[0].ratio == 1.5
    assert "will not converge at current settings" in signal[0].message
    # Edge-triggered (the second hopeless poll jumps the ladder, see below, but says it once),
    # and hysteresis: 95 % of the link is not "converging again".
    again = decide(state, ram_phase(iteration=3, dirty=150 * MIB, remaining=GIB // 4),
                   3.0, SETTINGS)
    assert not any(isinstance(a, WillNotConverge) for a in again)
    assert decide(state, ram_phase(iteration=4, dirty=95 * MIB, remaining=GIB // 5),
                  4.0, SETTINGS) == []
    cleared = decide(state, ram_phase(iteration=5, dirty=10 * MIB, remaining=GIB // 6),
                     5.0, SETTINGS)
    assert [(type(a), a.kind) for a in cleared] == [(Note, "converging")]


def test_it_does_nothing_once_the_job_has_ended():
    state = LadderState()
    assert decide(state, JobStats(type=JOB_COMPLETED), 0.0, SETTINGS) == []
    assert state.started_at is None


def test_a_guest_no_downtime_step_can_help_goes_to_postcopy_at_once_when_allowed():
    """Dirtying faster than the link carries, on two polls after a full pass: post-copy now,
    not after ten downtime steps and auto-converge's window (bench convergence: the moves
    ended at their deadline, the guest throttled all along)."""
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=10, postcopy=True)
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, settings)
    assert decide(state, ram_phase(iteration=1, dirty=60 * MIB, bps=25 * MIB), 1.0,
                  settings) == []  # the first pass says nothing
    first = decide(state, ram_phase(iteration=2, dirty=60 * MIB, bps=25 * MIB), 1.5, settings)
    assert not any(isinstance(a, StartPostCopy) for a in first)  # one poll may be a dip
    jump = decide(state, ram_phase(iteration=2, dirty=60 * MIB, bps=25 * MIB,
                                   remaining=70 * MIB), 2.0, settings)
    assert [type(a) for a in jump] == [StartPostCopy]
    assert "60 MiB/s" in jump[0].message and "25 MiB/s" in jump[0].message
    assert "70 MiB" in jump[0].message
    assert state.in_postcopy and state.downtime_step == 0  # no step was walked


def test_without_postcopy_the_jump_sets_the_target_downtime_and_starts_auto_converge_now():
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=10,
                              auto_converge_window_per_gib_s=20.0)
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, settings)
    decide(state, ram_phase(iteration=2, dirty=60 * MIB, bps=25 * MIB), 1.5, settings)
    jump = decide(state, ram_phase(iteration=2, dirty=60 * MIB, bps=25 * MIB,
                                   auto_converge_throttle=20), 2.0, settings)
    assert [(a.kind, getattr(a, "downtime_ms", None)) for a in jump if a.kind != "throttle"] \
        == [("downtime", 300), ("auto-converge", None)]
    assert "20 s from now" in jump[-1].message and "20 %" in jump[-1].message
    assert decide(state, ram_phase(iteration=5, dirty=60 * MIB, bps=25 * MIB), 21.0,
                  settings) == []  # auto-converge's window: no step, no jump again
    refused = decide(state, ram_phase(iteration=6, dirty=60 * MIB, bps=25 * MIB), 22.5,
                     settings)
    assert kinds(refused) == ["postcopy-not-allowed"]


def test_a_slow_but_converging_guest_still_walks_the_steps():
    """Half the link's rate: the target downtime can absorb it, so the steps are walked."""
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=3, postcopy=True)
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, settings)
    actions = []
    for t in (1.0, 1.5, 2.0, 11.0):
        actions += decide(state, ram_phase(iteration=2, dirty=50 * MIB, bps=100 * MIB,
                                           remaining=200 * MIB), t, settings)
    assert not state.in_postcopy and not state.jumped
    assert [a.downtime_ms for a in actions if isinstance(a, SetDowntime)] == [166]


def hopeless_until_throttled_to_the_most(settings, state):
    """A guest that dirties 60 MiB/s on a 25 MiB/s link through the jump and auto-converge,
    QEMU's throttle climbing to its most (99 %) by pass 10; returns the time of that poll."""
    decide(state, ram_phase(iteration=1), 0.0, settings)
    for t, iteration, throttle in ((1.5, 2, 20), (2.0, 2, 20), (5.0, 4, 40), (12.0, 10, 99)):
        actions = decide(state, ram_phase(iteration=iteration, dirty=60 * MIB, bps=25 * MIB,
                                          auto_converge_throttle=throttle), t, settings)
        assert not any(isinstance(a, Abort) for a in actions)
    return 12.0


def test_a_guest_still_beyond_reach_at_the_most_throttle_is_aborted_before_its_deadline():
    """Post-copy not allowed, the vCPUs throttled by 99 % and the memory still dirtied faster
    than the link carries (a device writing, not the vCPUs): nothing left on the ladder can
    help, so the move stops after one full pass at that throttle, not at its 150 s deadline."""
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=10)
    state = LadderState()
    t = hopeless_until_throttled_to_the_most(settings, state)
    same_pass = decide(state, ram_phase(iteration=10, dirty=60 * MIB, bps=25 * MIB,
                                        auto_converge_throttle=99), t + 2, settings)
    assert not any(isinstance(a, Abort) for a in same_pass)  # the throttle gets a full pass
    actions = []
    for dt in (4.0, 4.5):
        actions += decide(state, ram_phase(iteration=11, dirty=60 * MIB, bps=25 * MIB,
                                           auto_converge_throttle=99), t + dt, settings)
    aborts = [a for a in actions if isinstance(a, Abort)]
    assert [a.reason for a in aborts] == ["cannot converge"]
    assert t + 4.5 < completion_deadline_s(settings, GIB)
    message = aborts[0].message
    assert "99 %" in message and "60 MiB/s" in message and "25 MiB/s" in message
    assert "keeps running on the source" in message and "post-copy" in message
    assert decide(state, ram_phase(iteration=12, dirty=60 * MIB, bps=25 * MIB,
                                   auto_converge_throttle=99), t + 5, settings) == []


def test_a_throttled_guest_that_comes_within_reach_is_not_aborted():
    """At the most throttle, one poll within reach resets the count: a dip is not hope lost,
    and a guest whose writes slow down keeps its move."""
    settings = LadderSettings(downtime_target_ms=300, downtime_steps=10)
    state = LadderState()
    t = hopeless_until_throttled_to_the_most(settings, state)
    polls = ((t + 4.0, 60 * MIB), (t + 4.5, 5 * MIB), (t + 5.0, 60 * MIB))
    for now, dirty in polls:
        actions = decide(state, ram_phase(iteration=11, dirty=dirty, bps=25 * MIB,
                                          auto_converge_throttle=99), now, settings)
        assert not any(isinstance(a, Abort) for a in actions)


def test_no_early_abort_when_postcopy_is_allowed_or_the_throttle_can_still_rise():
    """With post-copy allowed the ladder switches instead; below 99 % QEMU still has a rung."""
    allowed = LadderSettings(downtime_target_ms=300, downtime_steps=10, postcopy=True,
                             auto_converge_window_per_gib_s=1000.0)
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, allowed)
    state.jumped = True  # as if the jump had been declined: only the abort rule is left
    state.auto_converge_at = 0.0
    for now, iteration in ((20.0, 10), (30.0, 12), (31.0, 12)):
        actions = decide(state, ram_phase(iteration=iteration, dirty=60 * MIB, bps=25 * MIB,
                                          auto_converge_throttle=99), now, allowed)
        assert not any(isinstance(a, Abort) for a in actions)
    rising = LadderSettings(downtime_target_ms=300, downtime_steps=10,
                            auto_converge_window_per_gib_s=1000.0)
    state = LadderState()
    decide(state, ram_phase(iteration=1), 0.0, rising)
    for now, iteration in ((2.0, 2), (2.5, 2), (20.0, 10), (30.0, 12), (31.0, 12)):
        actions = decide(state, ram_phase(iteration=iteration, dirty=60 * MIB, bps=25 * MIB,
                                          auto_converge_throttle=90), now, rising)
        assert not any(isinstance(a, Abort) for a in actions)
