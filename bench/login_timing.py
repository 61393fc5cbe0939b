"""`python -m bench.login_timing [--rounds N]`: does a failed sign-in tell known from unknown users?

A failed login for a username that exists runs the password hash; one for a name that does not
exist must spend the same time (a dummy hash), or the response time lists the accounts. This
posts wrong passwords through the app's own login form (Flask's test client: no network, the
real view, the real throttle counting in Redis with its limits off), alternating known and
unknown names, and writes the medians and their ratio to bench/results/login-timing.json.

A figure, not a test: a busy machine moves it. Settings: FERRY_BENCH_REDIS_URL (db 13).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "login-timing.json")
REDIS_URL = os.environ.get("FERRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
SECRET_KEY = "ferry-bench-throwaway-secret-key-" + "0" * 16


def build_app(instance: str):
    """A Ferry app on a throwaway SQLite file with one user, `known`; throttling off."""
    from app import create_app, upgrade_database
    from app.extensions import db
    from app.models import User
    app = create_app({"SECRET_KEY": SECRET_KEY, "INSTANCE_PATH": instance,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance}/bench.sqlite",
                      "REDIS_URL": REDIS_URL, "LOGIN_MAX_FAILURES_PER_ACCOUNT": 0,
                      "LOGIN_MAX_FAILURES_PER_ADDRESS": 0})
    upgrade_database(app)
    with app.app_context():
        user = User(username="known", role="viewer")
        user.set_password("the right password")
        db.session.add(user)
        db.session.commit()
    return app


def time_failures(app, rounds: int) -> dict:
    """Seconds per failed sign-in, alternating a known and an unknown username."""
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    samples = {"known": [], "unknown": []}
    for i in range(rounds * 2 + 2):
        who = "known" if i % 2 == 0 else f"nobody-{i}"
        start = time.perf_counter()
        response = client.post("/login", data={"username": who, "password": "wrong",
                                               "csrf_token": token})
        elapsed = time.perf_counter() - start
        assert response.status_code == 401, response.status_code
        if i >= 2:  # the first pair warms up (the dummy hash is made on first use)
            samples["known" if who == "known" else "unknown"].append(elapsed)
    return samples


def forget_failures(app):
    """Drop the failures this run counted, so that no later sign-in from 127.0.0.1 is held back."""
    from app.auth.throttle import PREFIX
    from app.services.jobs import redis_connection
    conn = redis_connection(app)
    for key in conn.scan_iter(f"{PREFIX}:*"):
        conn.delete(key)


def main(argv=None) -> int:
    """Measure, print and write the figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.login_timing", description=__doc__)
    parser.add_argument("--rounds", type=int, default=40, help="failed sign-ins per side")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-login-") as instance:
        app = build_app(instance)
        try:
            samples = time_failures(app, args.rounds)
        finally:
            forget_failures(app)
    known, unknown = (statistics.median(samples[k]) for k in ("known", "unknown"))
    doc = {"rounds": args.rounds, "load_average": os.getloadavg(),
           "known_median_ms": round(known * 1000, 2), "unknown_median_ms": round(unknown * 1000, 2),
           "unknown_over_known": round(unknown / known, 3),
           "known_ms": [round(s * 1000, 2) for s in samples["known"]],
           "unknown_ms": [round(s * 1000, 2) for s in samples["unknown"]]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(doc, handle, indent=2)
    print(f"failed sign-in, median of {args.rounds}: known user {doc['known_median_ms']} ms, "
          f"unknown user {doc['unknown_median_ms']} ms, ratio {doc['unknown_over_known']} "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
