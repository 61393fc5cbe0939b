"""Rows → the JSON objects of /api/v1 (the shapes are the schemas in app/api/openapi.py)."""


def iso(value):
    """A timestamp as ISO 8601 (UTC), or None."""
    return value.isoformat() if value else None


def compute_resource(r):
    """A compute resource without its SSH key path."""
    memory = r.memory
    return {"id": r.id, "name": r.name, "host": r.host, "port": r.port, "status": r.status,
            "status_reason": r.status_reason, "host_key_fingerprint": r.host_key_fingerprint,
            "storage_tags": list(r.storage_tags or []),
            "ip_blocks": [b.name for b in r.ip_blocks],
            "memory_total_mib": memory.get("total_mib"), "memory_free_mib": memory.get("free_mib"),
            "server_count": len(r.servers), "last_synced_at": iso(r.last_synced_at)}


def server(s):
    """A server with its disks and addresses."""
    return {"id": s.id, "uuid": s.uuid, "name": s.name, "state": s.state,
            "compute_resource_id": s.compute_resource_id,
            "compute_resource": s.compute_resource.name if s.compute_resource else None,
            "vcpus": s.vcpus, "memory_mib": s.memory_mib, "snapshot_count": s.snapshot_count,
            "disk_bytes": s.disk_size, "last_seen_at": iso(s.last_seen_at),
            "disks": [{"target": d.target, "format": d.format, "storage_type": d.storage_type,
                       "virtual_size": d.virtual_size, "allocation": d.allocation,
                       "storage_tag": d.storage_tag} for d in s.disks],
            "ip_addresses": [a.address for a in s.ip_addresses]}


def task(t, events=True):
    """A migration task with its live progress, ETA and (optionally) its timeline."""
    body = {"id": t.id, "group_id": t.group_id, "server_id": t.server_id,
            "server": t.server.name if t.server else None,
            "source_id": t.source_id, "source": t.source.name if t.source else None,
            "destination_id": t.destination_id,
            "destination": t.destination.name if t.destination else None,
            "mode": t.mode, "status": t.status, "phase": t.phase,
            "cancel_requested": bool(t.cancel_requested),
            "progress": t.progress_record.to_json() if t.progress else None,
            "eta": t.eta_record.to_json() if t.eta else None,
            "result": t.result_record.to_json() if t.result else None,
            "error": t.error, "created_at": iso(t.created_at),
            "started_at": iso(t.started_at), "finished_at": iso(t.finished_at)}
    if events:
        body["events"] = [{"id": e.id, "at": iso(e.at), "kind": e.kind, "message": e.message,
                           "data": e.data} for e in t.events]
    return body


def group(g, tasks=True):
    """A migration group, with its tasks (without their timelines)."""
    body = {"id": g.id, "status": g.status, "options": g.options_record.to_json(),
            "created_by": g.created_by.username if g.created_by else None,
            "created_at": iso(g.created_at), "started_at": iso(g.started_at),
            "finished_at": iso(g.finished_at), "task_count": len(g.tasks)}
    if tasks:
        body["tasks"] = [task(t, events=False) for t in g.tasks]
    return body


def evacuation(e):
    """An evacuation with its stored plan."""
    return {"id": e.id, "kind": e.kind, "status": e.status,
            "compute_resource_id": e.compute_resource_id,
            "compute_resource": e.compute_resource.name if e.compute_resource else None,
            "plan": e.plan_record.to_json(), "origin": e.origin, "error": e.error, "group_id": e.group_id,
            "returns_id": e.returns_id,
            "created_by": e.created_by.username if e.created_by else None,
            "created_at": iso(e.created_at), "approved_at": iso(e.approved_at)}


def webhook_event(e):
    """A received alert and what Ferry did about it."""
    return {"id": e.id, "source": e.source.name if e.source else None,
            "received_at": iso(e.received_at), "alert_status": e.alert_status,
            "dedup_key": e.dedup_key, "host": e.host,
            "compute_resource_id": e.compute_resource_id, "action": e.action,
            "reason": e.reason, "evacuation_id": e.evacuation_id, "alert": e.alert}


def webhook_source(s):
    """A webhook source, never its token or secret."""
    return {"id": s.id, "name": s.name, "kind": s.kind, "policy": s.policy,
            "host_labels": list(s.host_labels or []), "hmac": bool(s.hmac_secret),
            "enabled": bool(s.enabled), "created_at": iso(s.created_at),
            # Empty: any compute resource; "tag:<t>" entries match a storage tag.
            "allowlist": s.allowlist, "max_starts_per_hour": s.max_starts_per_hour,
            "signature_max_age_s": s.signature_max_age_s}


def job(j):
    """A background job (sync, connection test) as the row records it."""
    return {"id": j.id, "name": j.name, "args": j.args or {}, "status": j.status,
            "created_at": iso(j.created_at), "started_at": iso(j.started_at),
            "finished_at": iso(j.finished_at), "error": j.error, "result": j.result}
