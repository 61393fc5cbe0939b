"""The step machine both runners are made of (after nova's LiveMigrationTask, smaller).

A runner is a fixed list of named steps. Each step:

- `names(move)`: every name it will create (paths, export names, PID files, the
  node they live on), committed to the journal before it acts;
- `run(move, entry)`: a few lines that act, returning what to record;
- `settle(move, entry)`: after an interruption (the step raised, or the worker
  died in it), looks at the journal and at what the nodes say now and returns
  a `Decision`: done, redo, roll back, or needs attention (with what it saw);
- `undo(move, entry)`: removes what the journal says the step created, and
  nothing else.

`drive` runs steps in order. Before the runner's point of no return (offline:
the source's definition is gone; live: the destination runs the server) a
failure rolls every begun step back in reverse; after it, steps only go
forward, because the server lives on the destination. `resume` is recovery:
it settles the last begun step and goes on from there.
"""
from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flask import current_app

from app import status
from app.blobs import GroupOptions
from app.errors import FerryError
from app.extensions import db
from app.infra import ssh
from app.infra.host import Host, HostUnknown, settle_place
from app.infra.migration import DomainPlace
from app.models import utcnow
from app.services import disks, journal
from app.services.lease import LeaseLost
from app.infra.commands import storage
from app.services.timeline import Cancelled, NeedsAttention, event

log = logging.getLogger("ferry.steps")

DONE, REDO, ROLLBACK, ATTENTION, ADOPT = "done", "redo", "roll-back", "needs-attention", "adopt"
SETTLE_S = 30  # how long a node that does not answer is asked again before "unknown" stands


@dataclass(frozen=True)
class Decision:
    """What to do about a step after an interruption, and why."""

    action: str
    reason: str


class Step:
    """One named step; subclasses override what applies."""

    name = "step"

    @property
    def phase(self) -> str:
        """The name of the step's time in the task's phases (`<phase>_ms`)."""
        return self.name.replace("-", "_")

    def names(self, move) -> dict:
        """What the step will create, and on which node."""
        return {}

    def run(self, move, entry) -> dict | None:
        """Act; return what the journal should keep."""
        raise NotImplementedError

    def settle(self, move, entry) -> Decision:
        """Decide after an interruption; by default a step that touches no node is redone."""
        return Decision(REDO, "the step changes nothing on a node")

    def undo(self, move, entry) -> None:
        """Remove what the journal says this step created."""


class Runner:
    """A mode's list of steps and the step after which a move only goes forward."""

    mode = ""
    steps: tuple = ()
    committed_after = ""  # the step whose success puts the server on the destination
    connections: tuple = ()  # what `start` opens at once, in parallel (see Move.connect)

    def index(self, name: str) -> int:
        return [s.name for s in self.steps].index(name)

    def finish(self, move) -> None:
        """Record the outcome once every step is done."""
        raise NotImplementedError


class RealNodes:
    """Opens pinned SSH and libvirt (`Host`) connections to compute resources.

    Where and how to connect is read here, in the caller's thread (the row and the app's
    settings); the returned context opens on entry, which may be in another thread."""

    def host(self, resource):
        from app.services import resources  # the inventory service owns the pinned endpoints
        endpoint, known_hosts = ssh.Endpoint.of(resource), resources.known_hosts_dir()
        transport = current_app.config["LIBVIRT_TRANSPORT"]
        return _Opened(lambda: Host.open(endpoint, known_hosts, transport))

    def shell(self, resource):
        endpoint, timeout = ssh.Endpoint.of(resource), current_app.config["SSH_TIMEOUT"]
        return _Opened(lambda: ssh.connect(endpoint, timeout=timeout))


class _Opened:
    """A connection opened on entry and closed on exit."""

    def __init__(self, opener):
        self.opener = opener

    def __enter__(self):
        self.conn = self.opener()
        return self.conn

    def __exit__(self, *exc):
        self.conn.close()


class Move:
    """One task's move in progress: its rows, its connections (opened when first used)."""

    def __init__(self, task, nodes=None, lease=None, sleep=time.sleep):
        self.task, self.server = task, task.server
        self.source, self.destination = task.source, task.destination
        self.options = task.group.options_record if task.group else GroupOptions()
        self.nodes = nodes or RealNodes()
        self.lease = lease
        self.sleep = sleep
        self.state: dict = {}  # what steps hand each other within one run
        self.laps: dict = {}  # consecutive phases of this run, "<phase>_ms" (see lap)
        self.began_at, self._lap_at = utcnow(), time.monotonic()
        self._stack = contextlib.ExitStack()
        self._open: dict = {}
        self._failed: dict = {}  # what a parallel open raised, raised again at first use

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self._open.clear()

    def resource(self, which: str):
        return self.source if which == "source" else self.destination

    def host(self, which: str):
        """The libvirt door to "source" or "destination" ("control": a second one to the source)."""
        if which not in self._open:
            self._raise_failed(which)
            self._open[which] = self._stack.enter_context(self._opener(which))
        return self._open[which]

    def shell(self, which: str):
        key = f"ssh-{which}"
        if key not in self._open:
            self._raise_failed(key)
            self._open[key] = self._stack.enter_context(self._opener(key))
        return self._open[key]

    def _opener(self, key: str):
        """The (not yet entered) context of connection `key`: a host name or "ssh-<which>"."""
        if key.startswith("ssh-"):
            return self.nodes.shell(self.resource(key[len("ssh-"):]))
        return self.nodes.host(self.source if key in ("source", "control") else self.destination)

    def _raise_failed(self, key: str) -> None:
        if key in self._failed:
            raise self._failed.pop(key)

    def connect(self, keys) -> None:
        """Open the named connections ("source", "control", "ssh-destination", ...) at once.

        Each is a handshake and a login (0.1-0.2 s on the lab, more on a loaded machine);
        opened one by one where each was first used, five of them were about 0.9 s of every
        live move. Nothing on a node changes by opening. One that fails is not retried here:
        its first use raises what the opening raised, where a lazy open would have.
        """
        wanted = [k for k in keys if k not in self._open and k not in self._failed]
        if not wanted:
            return
        # Read here, in the session's thread: the openers' threads must not load rows.
        _ = (self.source.name, self.destination.name)
        contexts = {key: self._opener(key) for key in wanted}
        with ThreadPoolExecutor(max_workers=len(contexts), thread_name_prefix="connect") as pool:
            opening = {key: pool.submit(context.__enter__) for key, context in contexts.items()}
        for key, future in opening.items():
            try:
                self._open[key] = future.result()
            except Exception as exc:  # noqa: BLE001 - raised at first use, like a lazy open
                self._failed[key] = exc
                continue
            self._stack.push(contexts[key].__exit__)

    def lap(self, phase: str) -> None:
        """End the phase that began at the previous lap (or when the move began) and add its
        time to `laps` as "<phase>_ms": consecutive laps add up to the whole run."""
        now = time.monotonic()
        key = f"{phase}_ms"
        self.laps[key] = self.laps.get(key, 0) + int((now - self._lap_at) * 1000)
        self._lap_at = now

    def sh(self, which: str, argv, timeout=120, stdin=None) -> ssh.CommandResult:
        """Run a command on a node."""
        return ssh.run(self.shell(which), argv, timeout=timeout, stdin=stdin)

    def place(self, which: str, patient: bool = True) -> DomainPlace:
        """Where the server stands on a node; a node that does not answer is asked again on
        fresh connections (up to SETTLE_S) before `error` stands."""
        try:
            first = self.host(which).place(self.server.uuid)
        except FerryError as exc:
            first = DomainPlace(defined=False, running=False, error=str(exc))
        if not first.error or not patient:
            return first
        self._open.pop(which, None)  # the old connection is likely dead
        return settle_place(lambda: self.nodes.host(self.resource(which)), self.server.uuid,
                            first, SETTLE_S, self.sleep)

    def check(self) -> None:
        """Between steps: stop acting if the task's lease was lost."""
        if self.lease is not None:
            self.lease.check()

    def event(self, kind: str, message: str, data: dict | None = None) -> None:
        event(self.task, kind, message, data)


def drive(move: Move, runner: Runner, start: int = 0) -> None:
    """Run the runner's steps from `start`, journaled; roll back or stop on failure."""
    committed = runner.index(runner.committed_after)
    for index in _from(move, runner, start, committed):
        step = runner.steps[index]
        move.check()
        move.task.phase = step.name
        entry = journal.begin(move.task, step.name, step.names(move),
                              owner=getattr(move.lease, "owner", None))
        try:
            data = step.run(move, entry)
        except BaseException as exc:
            db.session.rollback()
            if isinstance(exc, (KeyboardInterrupt, SystemExit, LeaseLost)) \
                    or journal.database_lost(exc):
                # The process is going away, may no longer act (another owner took the
                # task), or can no longer record what it decides: whoever owns the task
                # next settles it from the journal.
                raise
            if isinstance(exc, NeedsAttention):  # the step established it needs a person
                journal.attention(entry, str(exc))
                raise
            if _settled_done(move, runner, index, entry, exc, committed):
                move.lap(step.phase)
                continue
            raise
        journal.done(entry, data)
        move.lap(step.phase)
    runner.finish(move)


def _from(move, runner, start: int, committed: int) -> list[int]:
    """The steps to run from `start` on, preceded by any step past the point of no return that
    never began: a task journaled by a Ferry whose steps came in another order (the record
    of the server after the source's cleanup) still gets every step."""
    skipped = [index for index in range(committed + 1, start)
               if journal.last(move.task, runner.steps[index].name) is None]
    return skipped + list(range(start, len(runner.steps)))


def _settled_done(move, runner, index, entry, exc, committed) -> bool:
    """A step raised: establish what it did. True when it happened after all at or past the
    point of no return (go on); otherwise roll back what was begun, or stop for a person."""
    try:
        decision = runner.steps[index].settle(move, entry)
    except FerryError as settle_exc:
        decision = Decision(ATTENTION, f"could not establish what {entry.name} did: {settle_exc}")
    if decision.action == DONE and index >= committed:
        journal.done(entry, {"settled": f"{exc}; {decision.reason}"})
        move.event("settled", f"{entry.name} reported an error ({exc}) but {decision.reason}: "
                              "going on.")
        return True
    if index > committed or decision.action == ATTENTION:
        # Past the point of no return the server lives on the destination: nothing is undone.
        journal.attention(entry, f"{exc}; {decision.reason}")
        raise NeedsAttention(f"Needs attention: {entry.name} failed ({exc}) and "
                             f"{decision.reason}. Nothing more was removed on either side.") from exc
    rollback(move, runner, index, reason=str(exc))
    return False


def rollback(move: Move, runner: Runner, upto: int, reason: str) -> None:
    """Undo begun steps from `upto` back to the first, each removing only what it journaled."""
    for index in range(upto, -1, -1):
        step = runner.steps[index]
        entry = journal.last(move.task, step.name)
        if entry is None or entry.status == status.STEP_FAILED:
            continue
        try:
            step.undo(move, entry)
        except HostUnknown as exc:
            journal.attention(entry, f"undo failed: {exc}")
            raise NeedsAttention(f"Needs attention: undoing {step.name} needs "
                                 f"{exc}; nothing more was removed.") from exc
        journal.failed(entry, f"undone: {reason}")


def resume(move: Move, runner: Runner) -> str:
    """Recovery: settle the last begun step and drive the move to its end from there.

    Returns the task's outcome as recorded.
    """
    begun = [journal.last(move.task, s.name) for s in runner.steps]
    last = max((i for i, e in enumerate(begun) if e is not None), default=None)
    committed = runner.index(runner.committed_after)
    if last is None:
        return "not-started"
    entry = begun[last]
    step = runner.steps[last]
    if entry.status == status.STEP_DONE:
        decision = Decision(DONE, "its outcome was committed")
    elif entry.status == status.STEP_FAILED:
        decision = Decision(ROLLBACK, "it was undone")
    elif entry.status == status.STEP_ATTENTION:
        decision = Decision(ATTENTION, entry.error or "it needed attention")
    else:
        decision = step.settle(move, entry)
    if decision.action == ADOPT:
        decision = step.adopt(move, entry)
    move.event("settled", f"Recovery settled {step.name}: {decision.action} ({decision.reason}).")
    if decision.action == DONE:
        if entry.status != status.STEP_DONE:
            journal.done(entry, {"settled": decision.reason})
        drive(move, runner, last + 1)
        return "finished"
    if decision.action == REDO:
        drive(move, runner, last)
        return "finished"
    if decision.action == ROLLBACK and last <= committed:
        rollback(move, runner, last, reason=f"recovery: {decision.reason}")
        return "rolled-back"
    journal.attention(entry, decision.reason)
    raise NeedsAttention(f"Needs attention: recovery found {step.name} unsettled: "
                         f"{decision.reason}. Nothing was removed.")


def start(task, runner: Runner, prepare, running: bool, lease=None, nodes=None) -> None:
    """A mode's move from the start: the server on its source in the state the mode needs,
    the mode's own preparation, a destination that already holds it refused, then the
    runner's steps."""
    with Move(task, nodes=nodes, lease=lease) as move:
        move.connect(runner.connections)
        move.lap("connect")
        check_start(move, running=running)
        prepare(move)
        refuse_existing(move)
        move.lap("check")
        drive(move, runner)


def request_phases(move: Move) -> dict:
    """The phases before this run, in ms, from the rows' timestamps: the request to the group's
    start (`preflight`: loading, preflight, start), to the job taking the task's lease
    (`queued`), to the task holding its nodes (`claims`), to this run (`starting`). A phase
    whose ends are not both known is left out."""
    task, group = move.task, move.task.group
    marks = [("preflight", group and group.created_at, group and group.started_at),
             ("queued", group and group.started_at, getattr(move.lease, "taken_at", None)),
             ("claims", getattr(move.lease, "taken_at", None), task.started_at),
             ("starting", task.started_at, move.began_at)]
    return {f"{name}_ms": max(0, int((end - begin).total_seconds() * 1000))
            for name, begin, end in marks if begin is not None and end is not None}


def check_start(move: Move, running: bool) -> None:
    """Before any step: the server is on the source in the state the mode needs, and the
    destination holds no domain of that UUID (creates nothing)."""
    name, source, destination = move.server.name, move.source.name, move.destination.name
    at_src = move.place("source")
    if at_src.error:
        raise FerryError(f"{source} did not answer: {at_src.error}")
    if not at_src.defined:
        raise FerryError(f"{name} is not on {source}")
    if running and not at_src.running:
        raise FerryError(f"{name} is not running: live migration needs a running server")
    if not running and (at_src.running or at_src.paused):
        raise FerryError(f"{name} is running: offline migration needs it stopped")
    at_dst = move.place("destination")
    if at_dst.defined:
        raise FerryError(f"{destination} already has a domain with {name}'s UUID")
    if at_dst.error:
        raise FerryError(f"{destination} did not answer: {at_dst.error}")


def refuse_existing(move: Move) -> None:
    """Refuse a destination path that is already taken (nothing is ever overwritten)."""
    for disk in move.state["plan"]:
        if move.sh("destination", ["test", "-e", disk["dst_path"]]).ok:
            raise FerryError(f"{move.destination.name} already has a file at {disk['dst_path']}: "
                             "refusing to overwrite it")


def carry_state(move: Move, entry, tpm: bool = True) -> None:
    """Copy the server's NVRAM file (and, offline, its TPM state: live, it travels in the
    migration stream) from the source to the destination, never over an existing file, each
    journaled on `entry` once written: undefining with UNDEFINE_NVRAM used to lose them."""
    xml = move.task.domain_xml
    nvram = disks.nvram_path(xml)
    tpm = disks.tpm_dir(xml, move.server.uuid) if tpm else None
    carried = [(f"the NVRAM {nvram}", storage.read_base64(nvram),
                storage.write_base64_exclusive(nvram), {"paths": [nvram]})] if nvram else []
    if tpm:
        carried.append((f"the TPM state {tpm}", storage.tar_out(tpm), storage.tar_in_exclusive(tpm),
                        {"dirs": [tpm]}))
    for label, read, write, names in carried:
        data = move.sh("source", read)
        if not data.ok:
            raise FerryError(f"cannot read {label} on {move.source.name}: {data.stderr.strip()}")
        wrote = move.sh("destination", write, stdin=data.stdout)
        if not wrote.ok:
            raise FerryError(f"cannot write {label} on {move.destination.name}: "
                             f"{wrote.stderr.strip()}")
        journal.add_names(entry, **names)
    if nvram or tpm:
        move.event("state", "Carried " + " and ".join(
            x for x in (nvram and f"NVRAM {nvram}", tpm and f"TPM state {tpm}") if x)
            + f" to {move.destination.name}.")



def source_removal_names(move: Move) -> dict:
    """What the final step removes on the source: its disks, NVRAM and TPM state (node
    "source-removal": never counted as things the task created)."""
    xml = move.task.domain_xml
    nvram, tpm = disks.nvram_path(xml), disks.tpm_dir(xml, move.server.uuid)
    plan = move.state["plan"]
    return {"node": "source-removal", "dirs": [tpm] if tpm else [],
            "paths": [d["path"] for d in plan if d.get("src_kind", "file") == "file"]
            + ([nvram] if nvram else []),
            "volumes": [[d["src_vg"], d["src_lv"]] for d in plan
                        if d.get("src_kind", "file") != "file"]}


def remove_source_files(move: Move, entry) -> dict:
    """Remove what `source_removal_names` named, each path only inside a storage pool (or the
    NVRAM's folder); say on the timeline what went and what was kept."""
    allowed = [p.get("path") for p in (move.source.facts or {}).get("storage_pools", [])
               if p.get("path")]
    nvram = disks.nvram_path(move.task.domain_xml)
    if nvram:
        allowed.append(posixpath.dirname(nvram))
    removed, kept = [], []
    for path in entry.names.get("paths") or []:
        try:
            argv = storage.remove_disk(path, allowed)
        except storage.RefusedCommand as exc:
            kept.append(f"{path} ({exc})")
            continue
        if move.sh("source", argv).ok:
            removed.append(path)
    for directory in entry.names.get("dirs") or []:
        if move.sh("source", storage.remove_tree(directory, disks.SWTPM_DIR)).ok:
            removed.append(directory)
    for vg, name in entry.names.get("volumes") or []:  # the server's own logical volumes
        gone = move.sh("source", storage.lvremove(vg, name))
        if gone.ok or "Failed to find logical volume" in gone.stderr:  # a redo: gone already
            removed.append(f"{vg}/{name}")
        else:
            kept.append(f"{vg}/{name} ({gone.stderr.strip()[-200:]})")
    if removed:
        move.event("cleanup", f"Removed the source's disks on {move.source.name}: "
                   + ", ".join(removed))
    if kept:
        move.event("cleanup", f"Kept on {move.source.name}: " + ", ".join(kept))
    return {"removed": removed, "kept": kept}


__all__ = ["Step", "Runner", "Move", "Decision", "drive", "resume", "rollback", "Cancelled",
           "DONE", "REDO", "ROLLBACK", "ATTENTION", "ADOPT"]
