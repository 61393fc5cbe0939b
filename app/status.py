"""Every status value Ferry stores, in one place."""

# Compute resources
RESOURCE_ACTIVE = "active"
RESOURCE_MAINTENANCE = "maintenance"
RESOURCE_UNREACHABLE = "unreachable"
RESOURCE_STATUSES = (RESOURCE_ACTIVE, RESOURCE_MAINTENANCE, RESOURCE_UNREACHABLE)

# Servers (libvirt domain states, plus what Ferry knows beyond libvirt)
SERVER_RUNNING = "running"
SERVER_STOPPED = "stopped"
SERVER_PAUSED = "paused"
SERVER_CRASHED = "crashed"
SERVER_SUSPENDED = "suspended"
SERVER_MISSING = "missing"  # was in the inventory, not found at the last sync
SERVER_MIGRATING = "migrating"
SERVER_UNKNOWN = "unknown"
SERVER_STATES = (
    SERVER_RUNNING, SERVER_STOPPED, SERVER_PAUSED, SERVER_CRASHED,
    SERVER_SUSPENDED, SERVER_MISSING, SERVER_MIGRATING, SERVER_UNKNOWN,
)

# Disks
FORMAT_RAW = "raw"
FORMAT_QCOW2 = "qcow2"
STORAGE_FILE_RAW = "file-raw"
STORAGE_FILE_QCOW2 = "file-qcow2"
STORAGE_LVM = "lvm"
STORAGE_THINLVM = "thinlvm"
STORAGE_TYPES = (STORAGE_FILE_RAW, STORAGE_FILE_QCOW2, STORAGE_LVM, STORAGE_THINLVM)

# Backups
BACKUP_FULL = "full"
BACKUP_INCREMENTAL = "incremental"

# Jobs (NetBox's vocabulary: failed = a known failure, errored = a bug or surprise)
JOB_PENDING = "pending"
JOB_RUNNING = "running"
JOB_FINISHED = "finished"
JOB_FAILED = "failed"
JOB_ERRORED = "errored"
JOB_DONE = (JOB_FINISHED, JOB_FAILED, JOB_ERRORED)

# Migration groups and tasks
MIGRATION_PENDING = "pending"
MIGRATION_PREFLIGHT = "preflight"
MIGRATION_RUNNING = "running"
MIGRATION_FINISHED = "finished"
MIGRATION_FAILED = "failed"
MIGRATION_CANCELLED = "cancelled"
MIGRATION_ATTENTION = "needs-attention"  # Ferry could not establish the truth: a person must look
MIGRATION_DONE = (MIGRATION_FINISHED, MIGRATION_FAILED, MIGRATION_CANCELLED, MIGRATION_ATTENTION)
MIGRATION_ACTIVE = (MIGRATION_PENDING, MIGRATION_PREFLIGHT, MIGRATION_RUNNING)

# Journal steps (models.MigrationStep)
STEP_INTENT = "intent"  # committed before the step touches a node
STEP_DONE = "done"
STEP_FAILED = "failed"  # it did not happen, or was undone: what it named is gone
STEP_ATTENTION = "needs-attention"  # what it did could not be established

MODE_LIVE = "live"
MODE_OFFLINE = "offline"

# Users
ROLE_VIEWER = "viewer"
ROLE_OPERATOR = "operator"
ROLE_ADMIN = "admin"
ROLES = (ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN)  # each includes the ones before it

# Evacuations
EVACUATION_EVACUATE = "evacuate"
EVACUATION_RETURN = "return"
EVACUATION_PLANNED = "planned"
EVACUATION_RUNNING = "running"
EVACUATION_FINISHED = "finished"
EVACUATION_FAILED = "failed"  # refused at start, or some servers did not move
EVACUATION_DISCARDED = "discarded"  # a newer plan replaced it before approval
EVACUATION_DONE = (EVACUATION_FINISHED, EVACUATION_FAILED, EVACUATION_DISCARDED)

# Monitoring webhooks
WEBHOOK_KINDS = ("alertmanager", "grafana", "zabbix", "uptime-kuma", "generic")
WEBHOOK_POLICY_PLAN = "plan"
WEBHOOK_POLICY_EVACUATE = "evacuate"
WEBHOOK_POLICIES = (WEBHOOK_POLICY_PLAN, WEBHOOK_POLICY_EVACUATE)
WEBHOOK_PLANNED = "planned"  # an evacuation plan was made, waiting for approval
WEBHOOK_EVACUATING = "evacuating"  # an evacuation was started
WEBHOOK_DUPLICATE = "duplicate"  # the same alert again: nothing started
WEBHOOK_RESOLVED = "resolved"  # a resolved alert: nothing started
WEBHOOK_UNKNOWN_HOST = "unknown-host"
WEBHOOK_IGNORED = "ignored"  # e.g. the host is already being evacuated
WEBHOOK_REFUSED = "refused"  # the host is outside the source's allowlist
WEBHOOK_ACTIONS = (WEBHOOK_PLANNED, WEBHOOK_EVACUATING, WEBHOOK_DUPLICATE, WEBHOOK_RESOLVED,
                   WEBHOOK_UNKNOWN_HOST, WEBHOOK_IGNORED, WEBHOOK_REFUSED)
