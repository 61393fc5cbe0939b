"""The JSON blobs kept on rows, typed: every key of a task's progress, ETA and result, a group's
options and an evacuation's plan is named here, once.

The columns stay plain JSON, so rows written before these types read as they are: `of()` takes
a stored dict (or None), ignores keys it does not know and gives missing ones their default;
`to_json()` is what a writer stores. Readers (templates, the API, the report, the metrics) get
these through the models' `*_record` properties.
"""
from dataclasses import asdict, dataclass, field, fields

from app import status

ETA_HISTORY = 200  # live ETA points kept on a task


class Blob:
    """`of()` from a stored dict, `to_json()` back; unknown keys are dropped, missing ones
    take their defaults."""

    @classmethod
    def of(cls, data):
        if isinstance(data, cls):
            return data
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Progress(Blob):
    """Where a running task is: the last libvirt jobStats sample (live), or the copy's percent
    (offline). `history` holds [seconds since start, memory remaining, data remaining] points."""

    percent: float | None = None
    phase: str | None = None
    elapsed_ms: int | None = None
    data_total: int | None = None
    data_processed: int | None = None
    data_remaining: int | None = None
    memory_total: int | None = None
    memory_processed: int | None = None
    memory_remaining: int | None = None
    disk_total: int | None = None
    disk_processed: int | None = None
    disk_remaining: int | None = None
    dirty_rate_bps: float | None = None
    bps: float | None = None
    iteration: int | None = None
    throttle: int | None = None
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class Prediction(Blob):
    """The preflight's pre-start estimate for one server (seconds with its band; `model_s` the
    model's own figure before calibration). None where a figure is infinite."""

    seconds: float | None = None
    low: float | None = None
    high: float | None = None
    expected_downtime_ms: float | None = None
    converges: bool | None = None
    passes: int | None = None
    reason: str | None = None
    model_s: float | None = None
    calibration: float | None = None
    tail_s: float | None = None  # offline: seconds recent moves took beyond the model

    @property
    def raw_s(self) -> float | None:
        """The model's figure (reports older than calibration have only `seconds`)."""
        return self.model_s if self.model_s is not None else self.seconds


@dataclass(frozen=True)
class EtaPoint(Blob):
    """One live estimate: `at_s` after the start, `remaining_s` to go (with the learned tail),
    `model_remaining_s` without it; None where the estimate is infinite."""

    at_s: float | None = None
    remaining_s: float | None = None
    model_remaining_s: float | None = None
    tail_s: float | None = None
    low_s: float | None = None
    high_s: float | None = None
    converges: bool | None = None
    percent: float | None = None
    phase: str | None = None  # "disk" (the disk copy) or "ram"; None: made before phases

    @property
    def raw_remaining_s(self) -> float | None:
        """The model's figure (points older than the tail have only `remaining_s`)."""
        return self.model_remaining_s if self.model_remaining_s is not None else self.remaining_s


@dataclass(frozen=True)
class Eta(Blob):
    """A task's ETA: the preflight's prediction, the latest live estimate and their history."""

    preflight: Prediction | None = None
    live: EtaPoint | None = None
    history: tuple = ()

    @classmethod
    def of(cls, data):
        if isinstance(data, cls):
            return data
        data = data or {}
        return cls(preflight=Prediction.of(data["preflight"]) if data.get("preflight") else None,
                   live=EtaPoint.of(data["live"]) if data.get("live") else None,
                   history=tuple(EtaPoint.of(p) for p in data.get("history") or ()))

    def with_point(self, point: EtaPoint) -> "Eta":
        """This ETA after a new live estimate (the history keeps its last ETA_HISTORY points)."""
        return Eta(self.preflight, point, (*self.history[-ETA_HISTORY:], point))

    def to_json(self) -> dict:
        return {"preflight": self.preflight.to_json() if self.preflight else None,
                "live": self.live.to_json() if self.live else None,
                "history": [p.to_json() for p in self.history]}


@dataclass(frozen=True)
class TaskResult(Blob):
    """How a finished task went. `total_ms` is libvirt's time (live) or the wall time
    (offline), `wall_ms` always the wall time; `phases` milliseconds per phase."""

    downtime_ms: int | None = None
    total_ms: int | None = None
    wall_ms: int | None = None
    bytes: int | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    postcopy: bool = False
    tls: bool = False
    phases: dict = field(default_factory=dict)
    new_address: str | None = None
    dirty_rate_bps: int | None = None  # live: how fast libvirt saw the guest dirty its memory
    dirty_set_bytes: int | None = None  # live: the most memory a pass found dirty


@dataclass(frozen=True)
class GroupOptions(Blob):
    """What a migration group was started with (an evacuation's group: mode "mixed", the
    evacuation's id, and no single destination)."""

    mode: str | None = None  # live | offline | mixed
    preserve_ip: bool = True
    convert_to: str | None = None
    allow_postcopy: bool = False
    destination_id: int | None = None
    acknowledged: bool = False
    evacuation_id: int | None = None

    @property
    def live(self) -> bool:
        return self.mode == status.MODE_LIVE

    def to_json(self) -> dict:
        # Only a group an evacuation runs names one.
        data = asdict(self)
        if data["evacuation_id"] is None:
            del data["evacuation_id"]
        return data


@dataclass(frozen=True)
class PlannedMove(Blob):
    """One server an evacuation will move, where, how and why there."""

    server_id: int
    server: str
    destination_id: int
    destination: str
    mode: str
    memory_mib: int | None = None
    reasons: tuple = ()

    def to_json(self) -> dict:
        return dict(asdict(self), reasons=list(self.reasons))


@dataclass(frozen=True)
class Unplaced(Blob):
    """One server an evacuation cannot move, and why."""

    server_id: int
    server: str
    reason: str


@dataclass(frozen=True)
class EvacuationPlan(Blob):
    """An evacuation's plan as it was shown, so what someone approved is what runs."""

    moves: tuple = ()
    unplaced: tuple = ()
    live: bool = True
    preserve_ip: bool = True

    @classmethod
    def of(cls, data):
        if isinstance(data, cls):
            return data
        data = data or {}
        return cls(moves=tuple(PlannedMove.of(m) for m in data.get("moves") or ()),
                   unplaced=tuple(Unplaced.of(u) for u in data.get("unplaced") or ()),
                   live=data.get("live", True), preserve_ip=data.get("preserve_ip", True))

    def to_json(self) -> dict:
        return {"live": self.live, "preserve_ip": self.preserve_ip,
                "moves": [m.to_json() for m in self.moves],
                "unplaced": [u.to_json() for u in self.unplaced]}
