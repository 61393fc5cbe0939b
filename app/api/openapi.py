"""The OpenAPI 3 document of /api/v1, built from a few helpers so it stays in step with views.py.

tests/unit/test_api.py validates every response the tests receive against it, and
fuzzes every operation with schemathesis; a route missing here fails those tests.
"""
from dataclasses import fields

from app import status
from app.blobs import Eta, GroupOptions, Progress, TaskResult

S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741 - reads as the type's name
B = {"type": "boolean"}
ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
ANY_OBJECT = {"type": "object", "additionalProperties": True}


def n(schema):
    """The schema, or null."""
    return {**schema, "nullable": True}


def obj(props, required=None):
    """An object whose listed properties are all required unless said otherwise."""
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required}


def blob(cls):
    """A typed JSON blob of app/blobs.py: exactly its keys (each as stored)."""
    return {"type": "object", "properties": {f.name: {} for f in fields(cls)},
            "additionalProperties": False}


def arr(items):
    return {"type": "array", "items": items}


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def enum(values):
    return {"type": "string", "enum": list(values)}


TIME = n({"type": "string", "format": "date-time"})

SCHEMAS = {
    "Error": obj({"error": {**obj({"code": S, "message": S}), "additionalProperties": True}}),
    "Me": obj({"username": S, "role": enum(status.ROLES)}),
    "ComputeResource": obj({
        "id": I, "name": S, "host": S, "port": I, "status": enum(status.RESOURCE_STATUSES),
        "status_reason": n(S), "host_key_fingerprint": n(S), "storage_tags": arr(S),
        "ip_blocks": arr(S), "memory_total_mib": n(I), "memory_free_mib": n(I),
        "server_count": I, "last_synced_at": TIME}),
    "Server": obj({
        "id": I, "uuid": S, "name": S, "state": S, "compute_resource_id": n(I),
        "compute_resource": n(S), "vcpus": I, "memory_mib": I, "snapshot_count": I,
        "disk_bytes": I, "last_seen_at": TIME,
        "disks": arr(obj({"target": S, "format": S, "storage_type": S, "virtual_size": n(I),
                          "allocation": n(I), "storage_tag": n(S)})),
        "ip_addresses": arr(S)}),
    "Job": obj({"id": I, "name": S, "args": ANY_OBJECT, "status": S, "created_at": TIME,
                "started_at": TIME, "finished_at": TIME, "error": n(S), "result": n(ANY_OBJECT)}),
    "Jobs": obj({"jobs": arr(ref("Job"))}),
    "TaskEvent": obj({"id": I, "at": TIME, "kind": S, "message": S, "data": n(ANY_OBJECT)}),
    "Task": obj({
        "id": I, "group_id": I, "server_id": n(I), "server": n(S), "source_id": n(I),
        "source": n(S), "destination_id": n(I), "destination": n(S), "mode": n(S), "status": S,
        "phase": n(S), "cancel_requested": B, "progress": n(blob(Progress)),
        "eta": n(blob(Eta)), "result": n(blob(TaskResult)), "error": n(S), "created_at": TIME, "started_at": TIME,
        "finished_at": TIME, "events": arr(ref("TaskEvent"))},
        required=["id", "group_id", "status", "progress", "eta", "cancel_requested"]),
    "Group": obj({
        "id": I, "status": S, "options": blob(GroupOptions), "created_by": n(S),
        "created_at": TIME,
        "started_at": TIME, "finished_at": TIME, "task_count": I, "tasks": arr(ref("Task"))},
        required=["id", "status", "options", "created_at", "task_count"]),
    "GroupReport": obj({
        "group": I, "status": S, "options": blob(GroupOptions), "created_at": TIME,
        "finished_at": TIME,
        "tasks": arr(obj({
            "task": I, "server": n(S), "source": n(S), "destination": n(S), "mode": n(S),
            "status": S, "error": n(S), "downtime_ms": n(I), "total_ms": n(I), "bytes": n(I),
            "phases": n(ANY_OBJECT), "eta": n(blob(Eta)), "started_at": TIME,
            "finished_at": TIME, "events": arr(obj({"at": TIME, "kind": S, "message": S}))}))}),
    "Preflight": obj({
        "results": arr(obj({"name": S, "status": enum(("pass", "info", "warn", "fail")), "message": S},
                           required=["name", "status", "message"])),
        "summary": ANY_OBJECT, "throughput_bps": ANY_OBJECT, "dirty_rate_bps": ANY_OBJECT,
        "eta": ANY_OBJECT,
        # What the nodes answered (null when the database alone refused), and whether those
        # answers came from a preflight of the same question a few seconds ago.
        "measured": n(ANY_OBJECT),
        "reused": n(obj({"report_id": I, "age_s": {"type": "number"}}))}),
    "Evacuation": obj({
        "id": I, "kind": enum((status.EVACUATION_EVACUATE, status.EVACUATION_RETURN)),
        "status": S, "compute_resource_id": n(I), "compute_resource": n(S),
        "plan": obj({"moves": arr(obj({"server_id": I, "server": S, "destination_id": I,
                                       "destination": S, "mode": S},
                                      required=["server_id", "server", "destination_id",
                                                "destination", "mode"])),
                     "unplaced": arr(obj({"server_id": I, "server": S, "reason": S}))},
                    required=["moves", "unplaced"]),
        "origin": S, "error": n(S), "group_id": n(I), "returns_id": n(I), "created_by": n(S),
        "created_at": TIME, "approved_at": TIME}),
    "WebhookEvent": obj({
        "id": I, "source": n(S), "received_at": TIME, "alert_status": n(S), "dedup_key": n(S),
        "host": n(S), "compute_resource_id": n(I), "action": enum(status.WEBHOOK_ACTIONS),
        "reason": S, "evacuation_id": n(I), "alert": n(ANY_OBJECT)}),
    "WebhookSource": obj({
        "id": I, "name": S, "kind": enum(status.WEBHOOK_KINDS),
        "policy": enum(status.WEBHOOK_POLICIES), "host_labels": arr(S), "hmac": B,
        "enabled": B, "created_at": TIME, "allowlist": arr(S), "max_starts_per_hour": n(I),
        "signature_max_age_s": I}),
    "MigrationRequest": obj({
        "server_ids": {**arr(ID), "minItems": 1, "uniqueItems": True}, "destination_id": ID,
        "live": B,
        "preserve_ip": B, "convert_to": n(enum(("file-raw", "file-qcow2", "lvm", "thinlvm"))),
        "allow_postcopy": B, "acknowledge_warnings": B},
        required=["server_ids", "destination_id"]),
}
for _name in ("ComputeResource", "Server", "Group", "Task", "Evacuation", "WebhookEvent",
              "WebhookSource"):
    SCHEMAS[_name + "Page"] = obj({"items": arr(ref(_name)), "total": I, "limit": I, "offset": I})

ERRORS = {400: "Bad request: a parameter or the body has the wrong shape",
          401: "No API token, or not a valid one", 403: "The token's user lacks the role",
          404: "No such object", 409: "Refused in the current state (see the message)",
          }


def op(summary, ok, schema, *, role=None, errors=(), params=(), body=None, tag):
    """One operation: its success answer, the errors it can give, parameters and body."""
    responses = {str(ok): {"description": "OK",
                           "content": {"application/json": {"schema": ref(schema)}}}}
    for code in sorted({401, *errors} | ({403} if role else set())):
        responses[str(code)] = {"description": ERRORS[code],
                                "content": {"application/json": {"schema": ref("Error")}}}
    operation = {"summary": summary + (f" ({role} or above)" if role else ""), "tags": [tag],
                 "responses": responses}
    if params:
        operation["parameters"] = list(params)
    if body:
        operation["requestBody"] = {"required": body[1], "content": {
            "application/json": {"schema": ref(body[0]) if isinstance(body[0], str) else body[0]}}}
    return operation


def path_id(name):
    return {"name": name, "in": "path", "required": True, "schema": ID}


def query(name, schema=S):
    return {"name": name, "in": "query", "required": False, "schema": schema}


PAGE = (query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
        query("offset", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}))
OP, AD = status.ROLE_OPERATOR, status.ROLE_ADMIN


def _paths():
    rid, gid, tid = path_id("resource_id"), path_id("group_id"), path_id("task_id")
    eid = path_id("evacuation_id")
    return {
        "/me": {"get": op("Who the token acts as", 200, "Me", tag="auth")},
        "/compute-resources": {"get": op(
            "List compute resources", 200, "ComputeResourcePage", errors=[400], tag="inventory",
            params=[query("status", enum(status.RESOURCE_STATUSES)), *PAGE])},
        "/compute-resources/{resource_id}": {"get": op(
            "Get a compute resource", 200, "ComputeResource", errors=[404], params=[rid],
            tag="inventory")},
        "/compute-resources/{resource_id}/maintenance": {"post": op(
            "Enter or leave maintenance", 200, "ComputeResource", role=OP, errors=[400, 404],
            params=[rid], body=(obj({"on": B}), True), tag="inventory")},
        "/compute-resources/{resource_id}/sync": {"post": op(
            "Queue an inventory sync of one compute resource", 202, "Jobs", role=OP,
            errors=[404], params=[rid], tag="inventory")},
        "/sync": {"post": op("Queue an inventory sync of every compute resource", 202, "Jobs",
                             role=OP, tag="inventory")},
        "/jobs/{job_id}": {"get": op("Get a background job", 200, "Job", errors=[404],
                                     params=[path_id("job_id")], tag="inventory")},
        "/servers": {"get": op(
            "List servers", 200, "ServerPage", errors=[400], tag="inventory",
            params=[query("compute_resource_id", ID), query("state"), query("name"), *PAGE])},
        "/servers/{server_id}": {"get": op("Get a server", 200, "Server", errors=[404],
                                           params=[path_id("server_id")], tag="inventory")},
        "/preflight": {"post": op(
            "Preflight a migration without starting it", 200, "Preflight", role=OP,
            errors=[400, 404, 409], body=("MigrationRequest", True), tag="migrations")},
        "/migration-groups": {
            "post": op("Start a migration group", 201, "Group", role=OP,
                       errors=[400, 404, 409], body=("MigrationRequest", True),
                       tag="migrations"),
            "get": op("List migration groups", 200, "GroupPage", errors=[400],
                      params=[query("status"), *PAGE], tag="migrations")},
        "/migration-groups/{group_id}": {"get": op(
            "Get a migration group with its tasks", 200, "Group", errors=[404], params=[gid],
            tag="migrations")},
        "/migration-groups/{group_id}/report": {"get": op(
            "A group's report: outcome, downtime, bytes, phases per server", 200, "GroupReport",
            errors=[404], params=[gid], tag="migrations")},
        "/migration-groups/{group_id}/cancel": {"post": op(
            "Cancel every unfinished task of a group", 202, "Group", role=OP, errors=[404, 409],
            params=[gid], tag="migrations")},
        "/tasks": {"get": op(
            "List migration tasks", 200, "TaskPage", errors=[400], tag="migrations",
            params=[query("status"), query("group_id", ID), query("server_id", ID), *PAGE])},
        "/tasks/{task_id}": {"get": op(
            "Get a task with progress, ETA and timeline", 200, "Task", errors=[404],
            params=[tid], tag="migrations")},
        "/tasks/{task_id}/cancel": {"post": op(
            "Cancel a task", 202, "Task", role=OP, errors=[404, 409], params=[tid],
            tag="migrations")},
        "/compute-resources/{resource_id}/evacuations": {"post": op(
            "Plan the evacuation of a compute resource", 201, "Evacuation", role=OP,
            errors=[400, 404, 409], params=[rid], body=(obj({"live": B, "preserve_ip": B}, []),
                                                        False), tag="evacuations")},
        "/compute-resources/{resource_id}/return": {"post": op(
            "Plan returning the servers its last evacuation moved", 201, "Evacuation", role=OP,
            errors=[404, 409], params=[rid], tag="evacuations")},
        "/evacuations": {"get": op(
            "List evacuations", 200, "EvacuationPage", errors=[400], tag="evacuations",
            params=[query("compute_resource_id", ID), query("status"), *PAGE])},
        "/evacuations/{evacuation_id}": {"get": op(
            "Get an evacuation and its plan", 200, "Evacuation", errors=[404], params=[eid],
            tag="evacuations")},
        "/evacuations/{evacuation_id}/approve": {"post": op(
            "Approve a plan: maintenance, then one group runs it", 202, "Evacuation", role=OP,
            errors=[400, 404, 409], params=[eid],
            body=(obj({"acknowledge_warnings": B}, []), False), tag="evacuations")},
        "/webhook-events": {"get": op(
            "List received alerts and what Ferry did", 200, "WebhookEventPage", errors=[400],
            tag="webhooks", params=[query("source"), query("action", enum(status.WEBHOOK_ACTIONS)),
                                    query("compute_resource_id", ID), *PAGE])},
        "/webhook-sources": {"get": op("List webhook sources", 200, "WebhookSourcePage", role=AD,
                                       errors=[400], params=list(PAGE), tag="webhooks")},
    }


def document():
    """The whole OpenAPI document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Ferry API", "version": "1",
                 "description": "Move KVM servers between compute resources. Authenticate with "
                                "Authorization: Bearer <API token> (flask users token NAME)."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
