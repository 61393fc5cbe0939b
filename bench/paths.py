"""The paths a person or a script takes: a live move started through the JSON API and through
`flask --app wsgi migrate --wait`, each timed to the server running on its destination,
against bare virsh moving the same server (issue 13's P1 as the user sees it, and the CLI line).

Production parts: the API is gunicorn serving the app, the move runs in a real `python -m
worker` (its work horse), both on the stage's database and a Redis db of their own; the CLI is
a fresh `flask` process per move, as typed at a terminal, which finds the worker listening and
follows the group (`--wait`). The API side is a script: POST /api/v1/migration-groups, then
GET the group every API_POLL_S until it ends. The three sides rotate (pair k starts with side
k mod 3), the server changes direction every move. One unmeasured move by the API and one by
the CLI come first (the service's node connections and bytecode warm, as on a machine that has
run Ferry before); the CLI's own start-up stays in its figure.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import redis

from app import status
from app.extensions import db
from app.models import ApiToken, MigrationGroup, User
from app.services import migration
from bench import ROOT
from bench.cli import FLASK, command_env
from bench.figures import Shuttle, phase_breakdown
from bench.fleet import server_id
from bench.scale import served
from bench.stage import REDIS_URL
from bench.stats import ratio, summary
from bench.workers import Workers

# The two servers of issue 13's P1 and their targets (Ferry's side / bare virsh).
SIZES = (
    {"key": "small", "memory_mib": 256, "disk_gib": 1, "fill_mib": 0, "target": 1.10},
    {"key": "large", "memory_mib": 1024, "disk_gib": 2, "fill_mib": 1024, "target": 1.05},
)
# Quick run (make test): one server, the large one shrunk to what proves the path (a filled
# disk) in seconds. The small one, which differed only in its empty disk, cost 30 s more.
QUICK_SIZES = ({**SIZES[1], "memory_mib": 256, "disk_gib": 1, "fill_mib": 128},)
CLI_MARGIN_S = 0.5  # the CLI's move may take this much longer than the API's
API_POLL_S = 0.1
SIDES = ("api", "cli", "virsh")


class Client:
    """A script using the JSON API with a bearer token."""

    def __init__(self, base: str, token: str):
        self.base, self.token = base, token
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with self.opener.open(req, timeout=120) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def move(self, server: int, destination: int, give_up_after: float = 600) -> dict:
        """Start a live move and follow it; seconds from the POST to the group's end."""
        wall0, t0 = time.time(), time.monotonic()
        code, body = self.call("POST", "/migration-groups", {
            "server_ids": [server], "destination_id": destination,
            "acknowledge_warnings": True})
        if code != 201:
            return {"ok": False, "seconds": time.monotonic() - t0, "error": body, "group": None}
        group = body["id"]
        while body["status"] not in status.MIGRATION_DONE:
            if time.monotonic() - t0 > give_up_after:
                return {"ok": False, "seconds": time.monotonic() - t0, "group": group,
                        "error": f"still {body['status']} after {give_up_after} s"}
            time.sleep(API_POLL_S)
            code, body = self.call("GET", f"/migration-groups/{group}")
        return {"ok": body["status"] == status.MIGRATION_FINISHED,
                "seconds": time.monotonic() - t0, "group": group, "t0": wall0, "t1": time.time(),
                "error": None if body["status"] == status.MIGRATION_FINISHED else body}


def cli_move(env: dict, name: str, destination: str) -> dict:
    """`flask --app wsgi migrate NAME --to DESTINATION --wait` in a fresh process, wall time."""
    wall0, t0 = time.time(), time.monotonic()
    proc = subprocess.run([FLASK, "--app", "wsgi", "migrate", name, "--to", destination,
                           "--acknowledge-warnings", "--wait", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds, wall1 = time.monotonic() - t0, time.time()
    try:
        outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        outcome = None
    ok = proc.returncode == 0 and bool(outcome) and outcome["status"] == status.MIGRATION_FINISHED
    return {"ok": ok, "seconds": seconds, "group": outcome and outcome.get("group"),
            "t0": wall0, "t1": wall1,
            "error": None if ok else (proc.stderr[-1500:] or proc.stdout[-1500:])}


def _timed(stage, side: dict) -> dict:
    """A side with its task's phases (ms) and the two ends no phase holds: `before_ms` (the
    client's start to the group's row: a CLI's start-up, an HTTP request) and `after_ms` (the
    group's end to the client seeing it: polling, a CLI's exit)."""
    side["seconds"] = round(side["seconds"], 3)
    side["phases"] = {}
    if side["group"] is None:
        return side
    with stage.app.app_context():
        db.session.expire_all()
        group = db.session.get(MigrationGroup, side["group"])
        report = migration.group_report(group)
        created, finished = group.created_at, group.finished_at
    side["phases"] = dict(report["tasks"][0]["phases"] or {})
    if created is not None and "t0" in side:
        side["phases"]["before_ms"] = max(0, round((created.timestamp() - side["t0"]) * 1000))
    if finished is not None and "t1" in side:
        side["phases"]["after_ms"] = max(0, round((side["t1"] - finished.timestamp()) * 1000))
    return side


def _token(stage) -> str:
    """An API token of an operator made for the bench."""
    with stage.app.app_context():
        user = User(username="bench-paths", role="operator")
        user.set_password("bench paths bench paths")
        row, plaintext = ApiToken.issue(user, "bench")
        db.session.add_all([user, row])
        db.session.commit()
    return plaintext


def user_paths(stage, pairs: int, sizes=SIZES) -> dict:
    """The whole figure: for each size, pairs of (API, CLI, virsh) moves, sides rotating."""
    redis.Redis.from_url(REDIS_URL).flushdb()  # an interrupted run's jobs must not run here
    token = _token(stage)
    workers = Workers(stage.database_url, REDIS_URL, stage.instance)
    env = command_env(stage.database_url, stage.instance, FERRY_REDIS_URL=REDIS_URL,
                      FERRY_SYNC_INTERVAL="0")
    result = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "sizes": {},
              "api_poll_s": API_POLL_S, "cli_margin_s": CLI_MARGIN_S, "gunicorn_workers": 1}
    workers.start(1)
    try:
        with served(stage.database_url, stage.instance, workers=1,
                    FERRY_REDIS_URL=REDIS_URL) as base:
            client = Client(base, token)
            warm = True
            for size in sizes:
                result["sizes"][size["key"]] = _size(stage, client, env, size, pairs, warm)
                warm = False
    finally:
        workers.stop()
    sized = result["sizes"].values()
    gaps = [g for s in sized for g in s["cli_minus_api_s"]["values"]]
    result["cli_minus_api_s"] = summary(gaps)
    result["cli_met"] = bool(gaps) and result["cli_minus_api_s"]["median"] <= CLI_MARGIN_S
    result["met"] = all(s["api_met"] and s["cli_met"] for s in sized) and result["cli_met"]
    return result


def _size(stage, client, env, size: dict, pairs: int, warm_up: bool) -> dict:
    """The pairs of one server size."""
    name = f"bench-path-{size['key']}"
    stage.server("node1", name, memory=size["memory_mib"], disk=size["disk_gib"],
                 fill=size["fill_mib"] or None)
    stage.boot([name], timeout=300)
    stage.sync()
    shuttle = Shuttle(stage, name, "node1", "node2")
    sid = server_id(stage.app, name)

    def api():
        side = client.move(sid, stage.fleet[shuttle.there])
        side["route"] = f"{shuttle.here}->{shuttle.there}"
        shuttle.locate()
        return side

    def cli():
        side = cli_move(env, name, shuttle.there)
        side["route"] = f"{shuttle.here}->{shuttle.there}"
        shuttle.locate()
        return side

    run = {"api": api, "cli": cli, "virsh": shuttle.virsh}
    warm = [api(), cli()] if warm_up else []
    rows = []
    for pair in range(pairs):
        order = SIDES[pair % 3:] + SIDES[:pair % 3]
        row = {side: run[side]() for side in order}
        for side in ("api", "cli"):
            _timed(stage, row[side])
        ok = all(row[side]["ok"] for side in SIDES)
        row["api_ratio"] = ratio(row["api"]["seconds"], row["virsh"]["seconds"]) if ok else None
        row["cli_ratio"] = ratio(row["cli"]["seconds"], row["virsh"]["seconds"]) if ok else None
        row["cli_minus_api_s"] = (round(row["cli"]["seconds"] - row["api"]["seconds"], 3)
                                  if ok else None)
        rows.append(row)
    api_stats = summary(r["api_ratio"] for r in rows)
    cli_stats = summary(r["cli_ratio"] for r in rows)
    gaps = [r["cli_minus_api_s"] for r in rows if r["cli_minus_api_s"] is not None]
    target = size["target"]
    return {
        "server": {k: size[k] for k in ("memory_mib", "disk_gib", "fill_mib")},
        "target": f"<= {target}", "api_ratio": api_stats, "cli_ratio": cli_stats,
        "api_met": bool(api_stats and api_stats["median"] <= target),
        "cli_met": bool(cli_stats and cli_stats["median"] <= target),
        "api_s": summary(r["api"]["seconds"] for r in rows if r["api"]["ok"]),
        "cli_s": summary(r["cli"]["seconds"] for r in rows if r["cli"]["ok"]),
        "virsh_s": summary(r["virsh"]["seconds"] for r in rows if r["virsh"]["ok"]),
        "cli_minus_api_s": {**(summary(gaps) or {}), "values": gaps},
        "api_phases_ms": phase_breakdown(r["api"] for r in rows),
        "cli_phases_ms": phase_breakdown(r["cli"] for r in rows),
        "warm_up": warm, "pairs": rows,
    }
