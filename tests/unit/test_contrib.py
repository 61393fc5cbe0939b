"""contrib/: the Prometheus rules pass promtool (syntax and their unit tests) and, like the
Grafana dashboard, use only metrics that Ferry's /metrics really exposes.

promtool comes from Debian's `prometheus` package (`make deps`): without it these tests fail.
"""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from app import status
from app.extensions import db
from app.models import Evacuation, WebhookEvent
from app.services import workers
from tests.fixtures.rack import rack  # noqa: F401 - a fixture
from tests.unit.test_metrics import history, scrape  # noqa: F401 - history is a fixture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES_DIR = os.path.join(ROOT, "contrib", "prometheus")
RULES = os.path.join(RULES_DIR, "ferry-rules.yml")
DASHBOARD = os.path.join(ROOT, "contrib", "grafana", "ferry.json")
PROMETHEUS_OWN = {"up"}  # written by Prometheus itself for every scrape target
METRIC_NAME = re.compile(r"\b(ferry_[a-z0-9_]+|up)\b(?!\s*\()")


def promtool(*args, cwd=RULES_DIR):
    """Run promtool; fails the test (never skips) when it is not installed."""
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make deps` (Debian's prometheus package) installs it"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rule_expressions():
    """{alert name: PromQL} of every rule in ferry-rules.yml."""
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in groups for rule in group["rules"]}


def dashboard_expressions():
    """Every PromQL expression of the Grafana dashboard's panels."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_it_passes_promtool_check_rules():
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_it_passes_the_rules_unit_tests():
    done = promtool("test", "rules", "ferry-rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_it_alerts_on_what_on_call_needs():
    assert {"FerryTaskNeedsAttention", "FerryMigrationPastDeadline", "FerrySyncFailing",
            "FerryNoWorker", "FerryWebhookDeliveriesRefused"} <= set(rule_expressions())


def test_it_has_a_dashboard_whose_queries_promtool_accepts(tmp_path):
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "ferry"
    assert all(panel.get("targets") for panel in dashboard["panels"])
    # promtool parses PromQL only inside rules: each query becomes a recording rule.
    records = [{"record": f"ferry:dashboard:{n}", "expr": expr}
               for n, expr in enumerate(dashboard_expressions())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))

    done = promtool("check", "rules", str(path), cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def every_family(app, client, history):
    """A database where every family has samples: tasks, a worker, an evacuation, events, a refusal."""
    with app.app_context():
        workers.beat("web-1", "w1")
        db.session.add_all([Evacuation(status=status.EVACUATION_PLANNED, plan={}),
                            WebhookEvent(action=status.WEBHOOK_PLANNED)])
        db.session.commit()
    assert client.post("/hooks/no-such-source").status_code == 401  # no token: counted as refused


def test_it_uses_only_metrics_that_ferry_exposes(client, redis_conn, every_family):
    exposed = {name for name, _ in scrape(client)} | PROMETHEUS_OWN
    used = {}
    for where, expr in ([(f"rule {name}", expr) for name, expr in rule_expressions().items()]
                        + [("dashboard", expr) for expr in dashboard_expressions()]):
        for name in METRIC_NAME.findall(expr):
            used.setdefault(name, where)

    assert "ferry_worker_last_seen_seconds" in used and "ferry_migration_task_age_seconds" in used
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert not missing, f"used but not in /metrics: {missing}"
