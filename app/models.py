"""Ferry's domain: compute resources, servers and their disks, migrations, jobs, people.

The database is the truth; Redis only carries job ids.
"""
import hashlib
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from flask_login import UserMixin
from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy import event, inspect
from werkzeug.security import check_password_hash, generate_password_hash

from app import status
from app.extensions import db

if TYPE_CHECKING:  # the typed blobs load where one is read: a CLI command or a page seldom does
    from app import blobs


def utcnow():
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(db.TypeDecorator):
    """A timestamp stored naive in UTC and read back timezone-aware on every backend."""

    impl = db.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        """Store UTC without tzinfo: SQLite keeps none and PostgreSQL would convert."""
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        """Give back an aware UTC datetime."""
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Document(db.TypeDecorator):
    """JSON that SQL reads into: jsonb on PostgreSQL, which reads one value of a document
    without parsing all of it again (json did, for every value read); JSON text elsewhere.
    PostgreSQL's types are imported only when PostgreSQL is used (40 ms at start-up)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect):
        """jsonb on PostgreSQL, the plain JSON type elsewhere."""
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


resource_ip_blocks = db.Table(
    "compute_resource_ip_block",
    db.Column("compute_resource_id", ForeignKey("compute_resource.id", ondelete="CASCADE"),
              primary_key=True),
    db.Column("ip_block_id", ForeignKey("ip_block.id", ondelete="CASCADE"), primary_key=True),
)


class ComputeResource(db.Model):
    """A hypervisor host Ferry reaches over SSH and libvirt."""

    __tablename__ = "compute_resource"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(default=22)
    user: Mapped[str] = mapped_column(String(100), default="root")
    key_path: Mapped[str] = mapped_column(String(1024))
    host_key: Mapped[str | None] = mapped_column(Text)  # pinned, "type base64"
    host_key_fingerprint: Mapped[str | None] = mapped_column(String(100))  # SHA256:...
    status: Mapped[str] = mapped_column(String(20), default=status.RESOURCE_ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(Text)
    facts: Mapped[dict] = mapped_column(Document, default=dict)
    storage_tags: Mapped[list] = mapped_column(JSON, default=list)
    backup_dir: Mapped[str] = mapped_column(String(1024), default="/var/lib/ferry/backups")
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Raised by every change of its facts, status, host key or servers (bump_generations below):
    # a stored preflight stands in for a fresh one only while its nodes' generations hold.
    generation: Mapped[int] = mapped_column(default=0, server_default="0")

    servers: Mapped[list["Server"]] = relationship(back_populates="compute_resource",
                                                   order_by="Server.name")
    ip_blocks: Mapped[list["IpBlock"]] = relationship(secondary=resource_ip_blocks,
                                                      back_populates="compute_resources",
                                                      order_by="IpBlock.name")

    @property
    def memory(self):
        """Memory facts, or an empty dict before the first sync."""
        return (self.facts or {}).get("memory") or {}

    @property
    def memory_used_percent(self):
        """How full the host's memory is, 0-100, or None when unknown."""
        total, free = self.memory.get("total_mib"), self.memory.get("free_mib")
        if not total or free is None:
            return None
        return round(100 * (total - free) / total)

    def __repr__(self):
        return f"<ComputeResource {self.name} {self.user}@{self.host}:{self.port}>"


class PreflightReport(db.Model):
    """The last preflight of one question (servers, destination, options), with the inventory
    generation of every node involved when it was measured: what a Start may reuse."""

    __tablename__ = "preflight_report"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), index=True)  # services.preflight.report_key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    generations: Mapped[dict] = mapped_column(JSON, default=dict)  # {"resource id": generation}
    report: Mapped[dict] = mapped_column(JSON)


# What a node's generation follows: its own facts, status and key, and its servers' placement,
# state and size. A sync rewrites the facts (gathered_at changes), so every sync counts.
RESOURCE_WATCHED = ("facts", "status", "host_key", "storage_tags")
SERVER_WATCHED = ("compute_resource_id", "compute_resource", "state", "vcpus", "memory_mib",
                  "snapshot_count")


@event.listens_for(OrmSession, "before_flush")
def bump_generations(session, _flush_context, _instances):
    """Raise the generation of every compute resource whose facts or servers this flush
    changes (in the same transaction; bulk UPDATEs bypass it, so code that must be seen
    by the preflight's reuse rule changes rows through the ORM)."""
    ids, resources = set(), []
    for obj in session.new | session.dirty | session.deleted:
        if isinstance(obj, ComputeResource):
            if obj in session.dirty and _changed(obj, RESOURCE_WATCHED):
                resources.append(obj)
        elif isinstance(obj, Server) and (obj not in session.dirty
                                          or _changed(obj, SERVER_WATCHED)):
            ids |= _placements(obj)
    with session.no_autoflush:
        resources += [session.get(ComputeResource, rid) for rid in ids]
    for resource in {id(r): r for r in resources if r is not None}.values():
        # An SQL expression, so two writers at once both count: generation = generation + 1.
        resource.generation = ComputeResource.generation + 1


def _changed(obj, names) -> bool:
    state = inspect(obj)
    return any(state.attrs[name].history.has_changes() for name in names)


def _placements(server) -> set:
    """Ids of the compute resources a server is on now and was on before this flush."""
    state = inspect(server)
    ids = {server.compute_resource_id}
    ids |= set(state.attrs.compute_resource_id.history.deleted or ())
    for resource in state.attrs.compute_resource.history.sum():
        if resource is not None:
            ids.add(resource.id)
    return {i for i in ids if i is not None}


class IpBlock(db.Model):
    """A range of addresses that servers take their IPs from; assigned to compute resources."""

    __tablename__ = "ip_block"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    cidr: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str | None] = mapped_column(String(64))

    compute_resources: Mapped[list[ComputeResource]] = relationship(
        secondary=resource_ip_blocks, back_populates="ip_blocks", order_by="ComputeResource.name")
    addresses: Mapped[list["IpAddress"]] = relationship(back_populates="block",
                                                        cascade="all, delete-orphan")


class IpAddress(db.Model):
    """One address of an IP block, allocated to a server or free."""

    __tablename__ = "ip_address"
    __table_args__ = (UniqueConstraint("block_id", "address"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    block_id: Mapped[int] = mapped_column(ForeignKey("ip_block.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(64))
    server_id: Mapped[int | None] = mapped_column(ForeignKey("server.id", ondelete="SET NULL"))

    block: Mapped[IpBlock] = relationship(back_populates="addresses")
    server: Mapped["Server | None"] = relationship(back_populates="ip_addresses")


class Server(db.Model):
    """A virtual server: one libvirt domain, known by its UUID."""

    __tablename__ = "server"
    # The servers list pages by name and filters by compute resource; the dashboard counts a
    # page of compute resources' servers by state: without these, every page scanned them all.
    __table_args__ = (db.Index("ix_server_name_id", "name", "id"),
                      db.Index("ix_server_compute_resource_id_state", "compute_resource_id",
                               "state"))
    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    compute_resource_id: Mapped[int | None] = mapped_column(
        ForeignKey("compute_resource.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(20), default=status.SERVER_UNKNOWN)
    vcpus: Mapped[int] = mapped_column(default=0)
    memory_mib: Mapped[int] = mapped_column(default=0)
    snapshot_count: Mapped[int] = mapped_column(default=0)
    persistent: Mapped[bool] = mapped_column(default=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    compute_resource: Mapped[ComputeResource | None] = relationship(back_populates="servers")
    disks: Mapped[list["Disk"]] = relationship(back_populates="server", order_by="Disk.target",
                                               cascade="all, delete-orphan")
    ip_addresses: Mapped[list[IpAddress]] = relationship(back_populates="server")

    @property
    def disk_size(self):
        """Total virtual size of the server's disks, in bytes."""
        return sum(d.virtual_size or 0 for d in self.disks)


class Disk(db.Model):
    """A disk of a server as libvirt and qemu-img see it."""

    __tablename__ = "disk"
    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("server.id", ondelete="CASCADE"),
                                           index=True)  # a page of servers reads their disks
    target: Mapped[str] = mapped_column(String(32))  # vda
    path: Mapped[str] = mapped_column(String(1024))
    format: Mapped[str] = mapped_column(String(20))  # raw, qcow2
    storage_type: Mapped[str] = mapped_column(String(20))  # file-raw, file-qcow2, lvm, thinlvm
    virtual_size: Mapped[int] = mapped_column(db.BigInteger, default=0)
    allocation: Mapped[int] = mapped_column(db.BigInteger, default=0)
    storage_tag: Mapped[str | None] = mapped_column(String(100))

    server: Mapped[Server] = relationship(back_populates="disks")


class User(UserMixin, db.Model):
    """A person who signs in; the role decides what they may change."""

    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20), default=status.ROLE_VIEWER)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Part of the id kept in the session cookie: raising it ends every session signed in before.
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")

    @property
    def is_active(self):
        """A disabled user cannot sign in, and their sessions and tokens stop working."""
        return self.disabled_at is None

    def get_id(self):
        """The session's user id, "<id>:<epoch>", so that a new epoch ends the older sessions."""
        return f"{self.id}:{self.session_epoch or 0}"

    def end_sessions(self):
        """Make every session signed in so far invalid at its next request."""
        self.session_epoch = (self.session_epoch or 0) + 1

    def set_password(self, password):
        """Store a salted hash of `password`; sessions signed in with the old one end."""
        self.password_hash = generate_password_hash(password)
        if self.id is not None:
            self.end_sessions()

    def check_password(self, password):
        """Tell whether `password` is this user's."""
        return check_password_hash(self.password_hash, password)

    def has_role(self, role):
        """Roles are ordered: admin can do what an operator can, who can do what a viewer can."""
        return status.ROLES.index(self.role) >= status.ROLES.index(role)


class ApiToken(db.Model):
    """A token for scripts; only its SHA-256 is stored, the prefix identifies it in lists."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: until revoked
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()

    @staticmethod
    def hash(token):
        """The stored form of a token."""
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name, expires_at=None):
        """Create a token for `user`; returns (row, plaintext) and the plaintext is never stored."""
        plaintext = "fry_" + secrets.token_urlsafe(32)
        row = cls(user=user, name=name, token_hash=cls.hash(plaintext), prefix=plaintext[:10],
                  expires_at=expires_at)
        return row, plaintext

    def state(self, now=None):
        """"active", "expired" or "revoked"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    def accepts(self, now=None):
        """Whether a request signed with this token is let in (its user must be active too)."""
        return self.state(now) == "active" and self.user.is_active


class AuditEntry(db.Model):
    """One change someone made, for the record."""

    __tablename__ = "audit_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)

    user: Mapped[User | None] = relationship()


class Job(db.Model):
    """A background job; this row is the truth, RQ only carries its id."""

    __tablename__ = "job"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))  # the entry point in worker.jobs
    args: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default=status.JOB_PENDING, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    rq_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict | None] = mapped_column(JSON)

    @property
    def done(self):
        """True once the job can no longer change."""
        return self.status in status.JOB_DONE


class MigrationGroup(db.Model):
    """Servers started together; their tasks run one by one."""

    __tablename__ = "migration_group"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), default=status.MIGRATION_PENDING, index=True)
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # blobs.GroupOptions
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Ownership of the group's job (services.lease), like a task's.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_job: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    created_by: Mapped[User | None] = relationship()
    tasks: Mapped[list["MigrationTask"]] = relationship(back_populates="group",
                                                        order_by="MigrationTask.id",
                                                        cascade="all, delete-orphan")

    @property
    def options_record(self) -> "blobs.GroupOptions":
        from app import blobs
        return blobs.GroupOptions.of(self.options)


class MigrationTask(db.Model):
    """Moving one server from one compute resource to another."""

    __tablename__ = "migration_task"
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("migration_group.id", ondelete="CASCADE"))
    server_id: Mapped[int | None] = mapped_column(ForeignKey("server.id", ondelete="SET NULL"))
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("compute_resource.id", ondelete="SET NULL"))
    destination_id: Mapped[int | None] = mapped_column(
        ForeignKey("compute_resource.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), default=status.MIGRATION_PENDING, index=True)
    preflight: Mapped[dict | None] = mapped_column(JSON)
    progress: Mapped[dict | None] = mapped_column(JSON)  # blobs.Progress
    eta: Mapped[dict | None] = mapped_column(JSON)  # blobs.Eta
    result: Mapped[dict | None] = mapped_column(JSON)  # blobs.TaskResult
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    mode: Mapped[str | None] = mapped_column(String(20))  # live | offline
    phase: Mapped[str | None] = mapped_column(String(40))  # what the running job is doing now
    # The running job touches this every poll; a task claiming to run with a stale
    # heartbeat has no live job, and recovery asks libvirt what really happened.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Ownership (services.lease): taken by compare-and-set, renewed while working.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_job: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The server's persistent definition as it was before the move: kept with the task so
    # that no failure can leave the server defined nowhere.
    domain_xml: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)

    group: Mapped[MigrationGroup] = relationship(back_populates="tasks")
    server: Mapped[Server | None] = relationship()
    source: Mapped[ComputeResource | None] = relationship(foreign_keys=[source_id])
    destination: Mapped[ComputeResource | None] = relationship(foreign_keys=[destination_id])
    events: Mapped[list["TaskEvent"]] = relationship(back_populates="task",
                                                     order_by="TaskEvent.id",
                                                     cascade="all, delete-orphan")
    steps: Mapped[list["MigrationStep"]] = relationship(back_populates="task",
                                                        order_by="MigrationStep.seq",
                                                        cascade="all, delete-orphan")

    @property
    def progress_record(self) -> "blobs.Progress":
        from app import blobs
        return blobs.Progress.of(self.progress)

    @property
    def eta_record(self) -> "blobs.Eta":
        from app import blobs
        return blobs.Eta.of(self.eta)

    @property
    def result_record(self) -> "blobs.TaskResult":
        from app import blobs
        return blobs.TaskResult.of(self.result)


class MigrationStep(db.Model):
    """One step of a task's journal: its intent and every name it will create, committed before
    it touches a node; its outcome after. Recovery removes only what these rows name."""

    __tablename__ = "migration_step"
    __table_args__ = (UniqueConstraint("task_id", "seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("migration_task.id", ondelete="CASCADE"),
                                         index=True)
    seq: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=status.STEP_INTENT)
    owner: Mapped[str | None] = mapped_column(String(200))  # the lease owner that ran it
    # What the step creates on which node: {"node": "destination", "paths": [...], ...}
    names: Mapped[dict] = mapped_column(JSON, default=dict)
    data: Mapped[dict | None] = mapped_column(JSON)  # what it saw, its outcome's details
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    task: Mapped["MigrationTask"] = relationship(back_populates="steps")


class Outbox(db.Model):
    """A job to enqueue, written in the transaction that needs it; a scheduler tick sends it.

    A Redis failure between commit and enqueue then only delays the job."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))  # the entry point in worker.jobs
    args: Mapped[dict] = mapped_column(JSON, default=dict)
    queue: Mapped[str] = mapped_column(String(50))
    timeout: Mapped[int | None] = mapped_column()
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    job_id: Mapped[int | None] = mapped_column()  # the Job row made when it was sent
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class TaskEvent(db.Model):
    """One line of a migration task's timeline."""

    __tablename__ = "task_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("migration_task.id", ondelete="CASCADE"),
                                         index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict | None] = mapped_column(JSON)

    task: Mapped[MigrationTask] = relationship(back_populates="events")


class Claim(db.Model):
    """One numbered slot of a concurrency limit, held by a group or a task (see services.limits)."""

    __tablename__ = "claim"
    __table_args__ = (UniqueConstraint("kind", "key", "slot"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # group | resource
    key: Mapped[str] = mapped_column(String(64))  # "*" or a compute resource id
    slot: Mapped[int] = mapped_column()
    holder: Mapped[str] = mapped_column(String(64), index=True)  # group:ID | task:ID
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evacuation(db.Model):
    """Emptying a compute resource: a stored plan, then (once approved) one migration group.

    `kind` is "evacuate" (servers leave the resource) or "return" (servers that an
    earlier evacuation moved go back to it). The plan is kept as it was shown, so
    what someone approved is exactly what runs.
    """

    __tablename__ = "evacuation"
    id: Mapped[int] = mapped_column(primary_key=True)
    compute_resource_id: Mapped[int | None] = mapped_column(
        ForeignKey("compute_resource.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(20), default=status.EVACUATION_EVACUATE)
    status: Mapped[str] = mapped_column(String(20), default=status.EVACUATION_PLANNED, index=True)
    plan: Mapped[dict] = mapped_column(JSON, default=dict)  # blobs.EvacuationPlan
    origin: Mapped[str] = mapped_column(String(100), default="user")  # user | webhook:NAME
    error: Mapped[str | None] = mapped_column(Text)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("migration_group.id", ondelete="SET NULL"))
    returns_id: Mapped[int | None] = mapped_column(ForeignKey("evacuation.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    compute_resource: Mapped[ComputeResource | None] = relationship()
    group: Mapped[MigrationGroup | None] = relationship()
    created_by: Mapped[User | None] = relationship()

    @property
    def plan_record(self) -> "blobs.EvacuationPlan":
        from app import blobs
        return blobs.EvacuationPlan.of(self.plan)

    def follow_group(self) -> None:
        """A running evacuation takes its group's outcome once the group has ended."""
        group = self.group
        if self.status == status.EVACUATION_RUNNING and group is not None \
                and group.status in status.MIGRATION_DONE:
            self.status = (status.EVACUATION_FINISHED if group.status == status.MIGRATION_FINISHED
                           else status.EVACUATION_FAILED)
            if self.status == status.EVACUATION_FAILED:
                self.error = f"group {group.id} ended {group.status}"

    @staticmethod
    def group_ended(group) -> None:
        """Called when a group ends: the evacuation it ran, if any, learns its outcome (the
        caller commits). On the model, so the engine needs no import of the evacuation service."""
        evac_id = group.options_record.evacuation_id
        evac = db.session.get(Evacuation, evac_id) if evac_id else None
        if evac is not None:
            evac.follow_group()


class WebhookSource(db.Model):
    """A monitoring tool allowed to call POST /hooks/<name>; only the token's SHA-256 is kept."""

    __tablename__ = "webhook_source"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)  # the URL segment
    kind: Mapped[str] = mapped_column(String(20))  # alertmanager grafana zabbix uptime-kuma generic
    token_hash: Mapped[str] = mapped_column(String(64))
    # HMAC needs the secret itself; it is never shown again after it is set.
    hmac_secret: Mapped[str | None] = mapped_column(String(255))
    policy: Mapped[str] = mapped_column(String(20), default=status.WEBHOOK_POLICY_PLAN)
    host_labels: Mapped[list] = mapped_column(JSON, default=lambda: ["instance", "host"])
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Guardrails: one leaked token must not be able to empty the whole fleet.
    # The compute resources (by name, or by a storage tag they carry) this source may act
    # on; both empty means any.
    allowed_resources: Mapped[list | None] = mapped_column(JSON)
    allowed_tags: Mapped[list | None] = mapped_column(JSON)
    # Evacuations it may start in any hour; beyond that they are only planned. None: no cap.
    max_starts_per_hour: Mapped[int | None] = mapped_column()
    # A signed timestamp (Grafana's) further than this from now is refused; 0 checks none.
    signature_max_age_s: Mapped[int] = mapped_column(default=300, server_default="300")

    @property
    def allowlist(self):
        """The allowlist for people: resource names, then "tag:<storage tag>"; empty: any."""
        return [*(self.allowed_resources or ()), *(f"tag:{t}" for t in self.allowed_tags or ())]

    def may_act_on(self, name, storage_tags):
        """True when the allowlist lets this source act on a resource with this name and tags."""
        names, tags = self.allowed_resources or [], self.allowed_tags or []
        if not names and not tags:
            return True
        return name in names or any(tag in tags for tag in storage_tags or ())


class WebhookEvent(db.Model):
    """One alert a monitoring tool sent, and what Ferry did about it."""

    __tablename__ = "webhook_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_source.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    alert_status: Mapped[str | None] = mapped_column(String(20))  # firing | resolved
    dedup_key: Mapped[str | None] = mapped_column(String(128), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    compute_resource_id: Mapped[int | None] = mapped_column(
        ForeignKey("compute_resource.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(30))  # status.WEBHOOK_ACTIONS
    reason: Mapped[str] = mapped_column(Text, default="")
    evacuation_id: Mapped[int | None] = mapped_column(
        ForeignKey("evacuation.id", ondelete="SET NULL"))
    alert: Mapped[dict | None] = mapped_column(JSON)  # the normalized alert, labels included

    source: Mapped[WebhookSource | None] = relationship()
    compute_resource: Mapped[ComputeResource | None] = relationship()
    evacuation: Mapped[Evacuation | None] = relationship()

    @property
    def alert_name(self) -> str | None:
        """The alert's name (Alertmanager's `alertname` label where the stored alert has none)."""
        alert = self.alert or {}
        return alert.get("name") or (alert.get("labels") or {}).get("alertname") or None


class WorkerHeartbeat(db.Model):
    """A worker process's last sign of life, written every few seconds by the process itself.

    When no row is fresh, no worker is running and nothing anyone starts will move.
    """

    __tablename__ = "worker_heartbeat"
    __table_args__ = (UniqueConstraint("hostname", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))  # the RQ worker's name
    pid: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
