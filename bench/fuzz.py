"""Fuzz the webhook (POST /hooks/<name>) and the JSON API (/api/v1) with hypothesis.

The app runs on PostgreSQL (the database where a NUL byte or an out-of-range integer
breaks a query, which SQLite would forgive) behind Flask's test client with TESTING off,
so an unhandled exception becomes the 500 a real client would get. Its inventory holds
one compute resource that alerts could name and webhook sources of every kind, one with
the "evacuate" policy. Callers: no token, a wrong one, a viewer's and an admin's.

Counted: every generated input, every 5xx (with the request that caused it), and the
actions started: migration groups, jobs, evacuations past `planned`, and compute
resources put into maintenance. Targets: 0 and 0.
"""
from __future__ import annotations

import json
import hashlib
import os
import tempfile

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from app import status
from app.extensions import db
from app.models import (ApiToken, ComputeResource, Evacuation, Job, MigrationGroup, User,
                        WebhookSource)
from bench.stage import fresh_database, make_app

DATABASE_URL = os.environ.get("FERRY_BENCH_DATABASE_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/ferry_bench") + "_fuzz"
HOST = "node-a"
SOURCES = {kind: f"fuzz-{kind}" for kind in status.WEBHOOK_KINDS}
TOKEN = "fuzz-source-token"


def routes_present(app) -> dict:
    """Which of the fuzzed surfaces this build of the app has."""
    rules = [r.rule for r in app.url_map.iter_rules()]
    return {"webhook": any(r.startswith("/hooks/") for r in rules),
            "api": any(r.startswith("/api/v1/") for r in rules)}


def _setup(app) -> dict:
    """The inventory and the callers' tokens."""
    with app.app_context():
        key = os.path.join(app.instance_path, "fuzz_key")
        with open(key, "w") as handle:
            handle.write("not a key\n")
        db.session.add(ComputeResource(name=HOST, host="10.255.255.1", port=22, user="root",
                                       key_path=key, status=status.RESOURCE_ACTIVE, facts={},
                                       storage_tags=[]))
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        for kind, name in SOURCES.items():
            db.session.add(WebhookSource(
                name=name, kind=kind, token_hash=digest,
                policy=(status.WEBHOOK_POLICY_EVACUATE if kind == "alertmanager"
                        else status.WEBHOOK_POLICY_PLAN)))
        tokens = {}
        for role in ("viewer", "admin"):
            user = User(username=f"fuzz-{role}", role=role)
            user.set_password("fuzz fuzz fuzz")
            row, plaintext = ApiToken.issue(user, "fuzz")
            db.session.add_all([user, row])
            tokens[role] = plaintext
        db.session.commit()
    return tokens


def actions_started(app) -> dict:
    """Rows that would mean an input started something (jobs are counted apart: an inventory
    sync that a valid admin request asks for is a job, not an action on a server)."""
    with app.app_context():
        db.session.expire_all()
        count = lambda q: db.session.scalar(db.select(db.func.count()).select_from(q))  # noqa: E731
        return {
            "migration_groups": count(db.select(MigrationGroup).subquery()),
            "evacuations_started": count(db.select(Evacuation).where(
                Evacuation.status.notin_([status.EVACUATION_PLANNED,
                                          status.EVACUATION_DISCARDED])).subquery()),
            "resources_in_maintenance": count(db.select(ComputeResource).where(
                ComputeResource.status == status.RESOURCE_MAINTENANCE).subquery()),
        }


def jobs_enqueued(app) -> int:
    """Job rows (queued inventory syncs and the like)."""
    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(Job))


# ---------------------------------------------------------------- strategies

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
NASTY = st.sampled_from(["", "\x00", "'; DROP TABLE server; --", "../../etc/passwd", "%00",
                         "ö" * 300, "9" * 40, "-1", "0", "1e309", "NaN", "null", "{{7*7}}",
                         "<script>", HOST, HOST.upper(), f"{HOST}:9100"])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT | NASTY)
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(TEXT | NASTY, kids, max_size=5), max_leaves=20)
# What HTTP can carry in a header at all (no CR/LF, latin-1).
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)
LABELS = st.dictionaries(st.sampled_from(["instance", "host", "alertname", "severity", "job"])
                         | TEXT, TEXT | NASTY | SCALARS, max_size=5)
ALERT = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["firing", "resolved"]) | SCALARS, "labels": LABELS | JSON,
    "annotations": LABELS | JSON, "startsAt": TEXT | SCALARS, "endsAt": TEXT | SCALARS,
    "fingerprint": TEXT | SCALARS, "generatorURL": TEXT})
SHAPED = st.fixed_dictionaries({}, optional={
    "version": st.just("4") | SCALARS, "status": st.sampled_from(["firing", "resolved"]) | SCALARS,
    "alerts": st.lists(ALERT, max_size=3) | JSON, "groupKey": TEXT | SCALARS,
    "commonLabels": LABELS, "receiver": TEXT, "orgId": SCALARS, "heartbeat": JSON | st.fixed_dictionaries(
        {}, optional={"status": SCALARS, "msg": TEXT}), "monitor": JSON | LABELS,
    "msg": TEXT, "event_id": SCALARS, "event_value": SCALARS, "host": TEXT | NASTY,
    "hostname": TEXT | NASTY, "severity": SCALARS})


def _dump(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


BODY = (st.binary(max_size=300) | JSON.map(_dump) | SHAPED.map(_dump)
        | st.just(b"") | st.just(b"{" * 5000))
CONTENT_TYPE = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-"
                                "urlencoded", "multipart/form-data; boundary=x", "json"])


def _auth(tokens):
    return st.sampled_from([None, "Bearer ", "Bearer wrong", "Basic Zm9vOmJhcg==", "bearer",
                            f"Bearer {TOKEN}", f"Bearer {tokens['viewer']}",
                            f"Bearer {tokens['admin']}", f"Bearer {tokens['admin']}\x00"])


def _api_paths(app) -> list[tuple[str, str]]:
    """(method, path template) of every /api/v1 rule, from the URL map."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                found.append((method, rule.rule))
    return found


PATH_VALUE = (st.integers(-5, 5) | st.integers(0, 2**70)).map(str) | TEXT.filter(
    lambda t: "/" not in t and "?" not in t and "#" not in t) | NASTY.filter(lambda t: "/" not in t)
QUERY = st.dictionaries(st.sampled_from(["limit", "offset", "status", "state", "resource",
                                         "server", "since", "q"]) | TEXT, TEXT | NASTY, max_size=4)


def _fill(template: str, values: list[str]) -> str:
    """A Flask rule with every <converter:name> replaced by a value (quoted as a path segment)."""
    from urllib.parse import quote
    out, index = [], 0
    for part in template.split("/"):
        if part.startswith("<") and part.endswith(">"):
            out.append(quote(values[index % len(values)], safe="", errors="surrogatepass"))
            index += 1
        else:
            out.append(part)
    return "/".join(out)


def run(examples: int, redis_url: str, seed_value: int = 20251125) -> dict:
    """Fuzz both surfaces with about `examples` inputs in all; returns the counts.

    redis_url: a Redis of the caller's own (jobs a valid request enqueues land there).
    """
    fresh_database(DATABASE_URL)
    app = make_app(DATABASE_URL, tempfile.mkdtemp(prefix="ferry-fuzz-"), REDIS_URL=redis_url,
                   TESTING=False, PROPAGATE_EXCEPTIONS=False)
    present = routes_present(app)
    result = {"routes": present, "inputs": 0, "by_surface": {}, "server_errors": 0,
              "server_error_samples": [], "statuses": {}, "action_samples": []}
    if not any(present.values()):
        result["skipped"] = "neither POST /hooks/<source> nor /api/v1 exists in this build"
        return result
    tokens = _setup(app)
    seen = {"actions": actions_started(app)}
    client = app.test_client()
    surfaces = [name for name in ("webhook", "api") if present[name]]
    per_surface = max(1, examples // len(surfaces))

    def record(surface, method, path, response_status, detail):
        if method != "GET" and response_status < 300:  # did this one start something?
            now = actions_started(app)
            if seen["actions"] is not None and now != seen["actions"] and len(
                    result["action_samples"]) < 20:
                result["action_samples"].append({"method": method, "path": path,
                                                 "status": response_status, "after": now,
                                                 **detail})
            seen["actions"] = now
        result["inputs"] += 1
        result["by_surface"][surface] = result["by_surface"].get(surface, 0) + 1
        key = str(response_status)
        result["statuses"][key] = result["statuses"].get(key, 0) + 1
        if response_status >= 500:
            result["server_errors"] += 1
            if len(result["server_error_samples"]) < 20:
                result["server_error_samples"].append({"method": method, "path": path,
                                                       "status": response_status, **detail})

    fuzz_settings = settings(max_examples=per_surface, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck), print_blob=False)
    # Most inputs get past the door (a real source name and its token, an admin's token) so
    # that the parsers and the services, not only the authentication, see the garbage.
    valid_name = st.sampled_from(list(SOURCES.values()))
    names = st.one_of(valid_name, valid_name, valid_name, TEXT.filter(lambda t: "/" not in t))
    hook_auth = st.one_of(*[st.just(f"Bearer {TOKEN}")] * 3, _auth(tokens))
    admin = st.just(f"Bearer {tokens['admin']}")
    api_auth = st.one_of(admin, admin, st.just(f"Bearer {tokens['viewer']}"), _auth(tokens))

    if present["webhook"]:
        @seed(seed_value)
        @fuzz_settings
        @given(name=names, auth=hook_auth, body=BODY, ctype=CONTENT_TYPE,
               signature=st.none() | HEADER_TEXT | st.just("sha256=" + "0" * 64))
        def webhook(name, auth, body, ctype, signature):
            headers = {k: v for k, v in (("Authorization", auth), ("Content-Type", ctype),
                                         ("X-Ferry-Signature", signature)) if v is not None}
            from urllib.parse import quote
            path = "/hooks/" + quote(name, safe="")
            response = client.post(path, data=body, headers=headers)
            record("webhook", "POST", path, response.status_code,
                   {"body": body[:200].decode("utf-8", "replace"), "auth": bool(auth)})
        webhook()

    if present["api"]:
        operations = _api_paths(app)

        @seed(seed_value + 1)
        @fuzz_settings
        @given(op=st.sampled_from(operations), values=st.lists(PATH_VALUE, min_size=1, max_size=3),
               auth=api_auth, body=st.none() | BODY, query=QUERY, ctype=CONTENT_TYPE)
        def api(op, values, auth, body, query, ctype):
            method, template = op
            path = _fill(template, values)
            headers = {k: v for k, v in (("Authorization", auth), ("Content-Type", ctype))
                       if v is not None}
            response = client.open(path, method=method, data=body, query_string=query,
                                   headers=headers)
            record("api", method, path, response.status_code,
                   {"body": (body or b"")[:200].decode("utf-8", "replace"), "query": query,
                    "auth": bool(auth)})
        api()

    result["actions_started"] = actions_started(app)
    result["actions"] = sum(result["actions_started"].values())
    result["jobs_enqueued"] = jobs_enqueued(app)
    with app.app_context():
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()
    return result

