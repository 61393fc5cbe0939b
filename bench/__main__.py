"""`python -m bench [--quick] [--only FIGURE ...]`: Ferry against bare virsh and the physical limit.

Writes bench/results/bench.json and bench.md (with --quick: bench-short.json and
bench-short.md, which are not kept in the repo); with --only, the figures run replace theirs in
the last document and the others are kept. `control_plane` and `cli` need no lab. A figure
that breaks is recorded with its error and the others still run; the exit status is 1 when
any figure broke.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

from bench import cli, eta_repeat, figures, offline_eta, paths, report, scale, tls
from bench.stage import DATABASE_URL, Stage

# Full run: >= 5 pairs per figure, sized to finish in about 15 minutes on a quiet 2-core machine.
FULL = {"overhead_pairs": 5, "convergence_pairs": 5, "deadline_s": 20, "dirty_mbit": 200,
        "dirty_rate": 40, "eta_runs": 5, "eta_mbit": 200, "evacuation_pairs": 5,
        "evacuation_servers": 6, "servers": 5000, "resources": 200, "big": 500, "small": 50,
        "page_rounds": 200, "planning_pairs": 5, "cli_runs": 21, "tls_pairs": 5,
        "path_pairs": 5, "path_sizes": paths.SIZES, "offline_moves": 10, "repeat_guests": 3,
        "repeat_trips": 3}
# Quick run (make test): every figure once, at a tiny scale; it proves the bench works.
QUICK = {**FULL, "overhead_pairs": 1, "convergence_pairs": 1, "deadline_s": 15, "eta_runs": 1,
         "evacuation_pairs": 1, "evacuation_servers": 2, "servers": 300, "resources": 10,
         "big": 50, "small": 5, "page_rounds": 5, "planning_pairs": 1, "cli_runs": 3,
         "tls_pairs": 1, "path_pairs": 1, "path_sizes": paths.QUICK_SIZES, "offline_moves": 4,
         "repeat_guests": 1, "repeat_trips": 2}
FIGURES = ("overhead", "user_paths", "convergence", "link_eta", "evacuation", "control_plane", "cli",
           "tls_cost", "offline_eta", "eta_repeat")
# Figures that need no lab: `python -m bench --only control_plane cli` runs anywhere with
# PostgreSQL.
WITHOUT_LAB = ("control_plane", "cli")


def run_figure(name: str, settings: dict, stage) -> dict:
    """Run one figure with the settings of this mode."""
    s = settings
    if name == "overhead":
        return figures.overhead(stage, s["overhead_pairs"])
    if name == "user_paths":
        return paths.user_paths(stage, s["path_pairs"], s["path_sizes"])
    if name == "convergence":
        return figures.convergence(stage, s["convergence_pairs"], s["deadline_s"],
                                   s["dirty_mbit"], s["dirty_rate"])
    if name == "link_eta":
        return figures.link_and_eta(stage, s["eta_runs"], s["eta_mbit"])
    if name == "evacuation":
        return figures.evacuation_makespan(stage, s["evacuation_pairs"],
                                           s["evacuation_servers"])
    if name == "control_plane":
        return scale.control_plane(DATABASE_URL + "_scale", s["servers"], s["resources"],
                                   s["big"], s["small"], s["page_rounds"], s["planning_pairs"])
    if name == "cli":
        return cli.startup(DATABASE_URL + "_cli", s["cli_runs"])
    if name == "tls_cost":
        return tls.cost(stage, s["tls_pairs"])
    if name == "offline_eta":
        return offline_eta.offline_eta(stage, s["offline_moves"])
    if name == "eta_repeat":
        return eta_repeat.eta_repeat(stage, s["repeat_guests"], s["repeat_trips"], s["eta_mbit"])
    raise ValueError(f"unknown figure {name}")


def _speed(machine: dict) -> str:
    """How fast the machine ran Python, where the run measured it (bench.report.python_ms)."""
    if machine.get("python_ms") is None:
        return ""
    return f", a million Python additions in {machine['python_ms']} ms"


def main(argv=None) -> int:
    """Run the figures, write the results, print where they are."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one pair each, tiny scale")
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="run only these figures")
    args = parser.parse_args(argv)
    report.exit_cleanly_on_sigterm()
    settings = QUICK if args.quick else FULL
    names = args.only or FIGURES
    started, t0 = report.stamp(), time.monotonic()
    document = {"mode": "quick" if args.quick else "full", "started_at": started,
                "settings": settings, "machine_at_start": report.machine(),
                "figures": {}, "errors": {}, "seconds": {}}
    stage = None
    try:
        for name in names:
            t = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                if stage is None and name not in WITHOUT_LAB:
                    stage = Stage()
                document["figures"][name] = run_figure(name, settings, stage)
                if stage is not None:
                    stage.clear()
            except Exception:  # noqa: BLE001 - one broken figure must not hide the others
                document["errors"][name] = traceback.format_exc()
                print(document["errors"][name], file=sys.stderr)
                if stage is not None:
                    stage.clear()
            document["seconds"][name] = round(time.monotonic() - t, 1)
            print(f"bench: {name} done in {document['seconds'][name]} s", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):  # stopped: keep the figures already measured
        document["errors"]["interrupted"] = f"stopped during {name}"
    finally:
        if stage is not None:
            stage.close()
    if args.only:  # a partial run updates its figures in the last full (or quick) document
        return report.fold("bench", args.quick, document, t0, markdown)
    return report.finish("bench", args.quick, document, t0, markdown)


def markdown(doc: dict) -> str:
    """The short summary: one line per figure with its target and verdict."""
    f, rows = doc["figures"], []
    if "overhead" in f:
        o = f["overhead"]
        rows.append(("Overhead: Ferry live / bare virsh", o["target"], report.spread(o["ratio"]),
                     report.verdict(o["met"])))
        rows.append(("  (task only, preflight excluded)", "", report.spread(o["task_only_ratio"]),
                     ""))
        if o.get("ferry_phases_ms"):
            rows.append(("  Ferry's phases, median ms", "", ", ".join(
                f"{name[:-3]} {stats['median']:g}" for name, stats in o["ferry_phases_ms"].items()
                if stats), ""))
    if "user_paths" in f:
        p = f["user_paths"]
        for key, size in p["sizes"].items():
            server = size["server"]
            label = (f"{server['memory_mib']} MiB, {server['disk_gib']} GiB disk"
                     + (f" holding {server['fill_mib']} MiB" if server["fill_mib"] else ""))
            for side, how in (("api", "API request"), ("cli", "`migrate --wait`")):
                rows.append((f"Overhead from the {how} / bare virsh ({label})", size["target"],
                             report.spread(size[f"{side}_ratio"]),
                             report.verdict(size[f"{side}_met"])))
            rows.append(("  seconds, API / CLI / virsh", "", f"{report.spread(size['api_s'])} / "
                         f"{report.spread(size['cli_s'])} / {report.spread(size['virsh_s'])}",
                         ""))
            if size["api_phases_ms"]:
                rows.append(("  API move's phases, median ms", "", ", ".join(
                    f"{name[:-3]} {stats['median']:g}"
                    for name, stats in size["api_phases_ms"].items() if stats), ""))
        rows.append(("CLI `migrate --wait` minus API, s", f"<= {p['cli_margin_s']}",
                     report.spread(p["cli_minus_api_s"]), report.verdict(p["cli_met"])))
    if "convergence" in f:
        c = f["convergence"]
        rows.append(("Convergence: completed within downtime target, Ferry vs virsh",
                     c["target"], f"Ferry {c['ferry_within_target']:.0%}, virsh "
                     f"{c['virsh_within_target']:.0%}", report.verdict(c["met"])))
        rows.append(("  downtime ms, Ferry / virsh", "", f"{report.spread(c['ferry_downtime_ms'])}"
                     f" / {report.spread(c['virsh_downtime_ms'])}", ""))
        rows.append(("  total time, Ferry / virsh (deadline if unfinished)", "",
                     report.spread(c["ratio"]), ""))
    if "link_eta" in f:
        use, eta = f["link_eta"]["link_use"], f["link_eta"]["eta"]
        rows.append(("Link use", use["target"], report.spread(use["ratio"]),
                     report.verdict(use["met"])))
        rows.append(("  (libvirt's own elapsed time instead of the wall time)", "",
                     report.spread(use.get("with_libvirt_time")), ""))
        rows.append(("ETA error at start", eta["target"], report.spread(eta["error_at_start"]),
                     report.verdict(eta["within_at_start"] == 1.0)))
        rows.append(("ETA error at 25 % (of the move's time)", eta["target"],
                     report.spread(eta["error_at_25"]), report.verdict(eta["within_at_25"] == 1.0)))
        if eta.get("error_at_25_counter"):
            rows.append(("  (at 25 % of libvirt's data counter, the earlier definition)", "",
                         report.spread(eta["error_at_25_counter"]), ""))
    if "evacuation" in f:
        e = f["evacuation"]
        rows.append(("Evacuation makespan / lower bound", e["target"], report.spread(e["ratio"]),
                     report.verdict(e["met"])))
    if "control_plane" in f:
        pages, plans = f["control_plane"]["pages"], f["control_plane"]["planning"]
        rows.append(("p95 dashboard / static page", pages["target"],
                     f"{pages['dashboard_ratio']:g} (p95 {pages['p95_s']['dashboard']:g} s)",
                     report.verdict(pages["dashboard_ratio"] <= 3)))
        rows.append(("p95 servers list / static page", pages["target"],
                     f"{pages['servers_ratio']:g} (p95 {pages['p95_s']['servers']:g} s)",
                     report.verdict(pages["servers_ratio"] <= 3)))
        rows.append((f"Evacuation planning {plans['servers'][0]} / {plans['servers'][1]} servers",
                     plans["target"], report.spread(plans["ratio"]), report.verdict(plans["met"])))
    if "cli" in f:
        c = f["cli"]
        rows.append(("CLI start-up: `flask --app wsgi resources list`, wall s", c["target"],
                     report.spread(c["resources_list_s"]), report.verdict(c["met"])))
        rows.append(("  `flask --app wsgi --help`, wall s", "", report.spread(c["help_s"]), ""))
        rows.append(("  CPU s (user + system), resources list / --help", "",
                     f"{report.spread(c['cpu_s']['resources_list'])} / "
                     f"{report.spread(c['cpu_s']['help'])}", ""))
    if "tls_cost" in f:
        for mode in ("live", "offline"):
            t = f["tls_cost"][mode]
            rows.append((f"Transfer TLS cost, {mode} move: task time TLS / plain", "report only",
                         report.spread(t["ratio"]), ""))
            rows.append(("  seconds, TLS / plain", "", f"{report.spread(t['tls_s'])} / "
                         f"{report.spread(t['plain_s'])}", ""))
    if "offline_eta" in f:
        o = f["offline_eta"]
        rows.append(("Offline ETA error, once a tail is learned", o["target"],
                     report.spread(o["error"]), report.verdict(o["met"])))
        rows.append(("  (the model alone, every move)", "", report.spread(o["model_error"]), ""))
    if "eta_repeat" in f:
        r = f["eta_repeat"]
        for when, key in (("at start", "error_at_start"), ("at 25 %", "error_at_25")):
            rows.append((f"ETA error {when}, busy guest moved again (its last move learned)",
                         r["target"], report.spread(r["learned"][key]),
                         report.verdict(r["learned"][key.replace("error", "within")] == 1.0)))
            rows.append((f"  (their first moves, nothing learned, {when})", "",
                         report.spread(r["first"][key]), ""))
    text = [f"# Ferry benchmarks ({doc['mode']} run)", "",
            f"Started {doc['started_at']}, took {doc['duration_s']} s on "
            f"{doc['machine_at_start']['cpus']} CPUs (load average at start "
            f"{doc['machine_at_start']['loadavg'][0]}, at end "
            f"{doc['machine_at_end']['loadavg'][0]}), lab `{doc['machine_at_start']['lab']}`"
            + _speed(doc['machine_at_start']) + ".",
            "Every figure is a ratio of two sides measured alternately in this run; details, "
            "definitions and every pair are in the JSON beside this file.", "",
            report.table(rows)]
    for rerun in doc.get("reruns", []):
        text.append(f"Re-measured alone (`python -m bench --only {' '.join(rerun['figures'])}`): "
                    f"{', '.join(rerun['figures'])} at {rerun['started_at']} (load average "
                    f"{rerun['machine_at_start']['loadavg'][0]}{_speed(rerun['machine_at_start'])})"
                    ".\n")
    for name, error in doc["errors"].items():
        text.append(f"**{name} broke:** `{error.strip().splitlines()[-1]}`\n")
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
