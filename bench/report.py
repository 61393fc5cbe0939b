"""Writing results: the JSON document and its short Markdown summary, side by side."""
from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time

from bench import RESULTS


def machine() -> dict:
    """What the numbers were measured on (a busy machine makes every figure noisy, a slow one
    every figure in seconds longer: `python_ms` says how fast this one ran Python)."""
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "kernel": platform.release(), "python": platform.python_version(),
            "lab": os.environ.get("FERRY_LAB_NAME", "ferrylab"), "python_ms": python_ms()}


def python_ms(rounds: int = 3) -> float:
    """Milliseconds for a fixed piece of pure Python (a million additions), the best of a few:
    on the same 2-CPU machine it was 3 times longer one day than another, and the CLI's start-up
    (in seconds, not a ratio) with it. Two runs' figures in seconds compare only beside it."""
    best = float("inf")
    for _ in range(rounds):
        t0, total = time.perf_counter(), 0
        for number in range(1_000_000):
            total += number
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


def write(name: str, document: dict, markdown: str) -> tuple[str, str]:
    """Write RESULTS/<name>.json and RESULTS/<name>.md; returns both paths."""
    os.makedirs(RESULTS, exist_ok=True)
    json_path = os.path.join(RESULTS, f"{name}.json")
    md_path = os.path.join(RESULTS, f"{name}.md")
    with open(json_path + ".tmp", "w") as handle:
        json.dump(document, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(json_path + ".tmp", json_path)
    with open(md_path, "w") as handle:
        handle.write(markdown)
    return json_path, md_path


def write_markdown(name: str, markdown: str) -> str:
    """Write RESULTS/<name>.md alone (an index of other documents); returns its path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as handle:
        handle.write(markdown)
    return path


def stamp() -> str:
    """Now, in UTC, for the documents."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def spread(stats: dict | None, unit: str = "") -> str:
    """'1.23 (1.10-1.40, n=5)' for a summary, '-' when there is none."""
    if not stats:
        return "-"
    return (f"{stats['median']:g}{unit} ({stats['min']:g}-{stats['max']:g}{unit}, "
            f"n={stats['n']})")


def verdict(met) -> str:
    """The Markdown cell for a target met or missed."""
    return {True: "met", False: "**missed**"}.get(met, "-")


def table(rows) -> str:
    """A Markdown table from (figure, target, measured, verdict) rows."""
    lines = ["| Figure | Target | Measured: median (min-max, n) | Verdict |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the servers, links and processes a run set up are
    put back by its `finally` blocks when someone stops it."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def finish(name: str, quick: bool, document: dict, started: float, markdown) -> int:
    """Stamp the end, write <name>.json/.md (<name>-short.* for a quick run), say where;
    returns the exit status: 1 when anything in the run broke."""
    document.update(finished_at=stamp(), duration_s=round(time.monotonic() - started, 1),
                    machine_at_end=machine())
    paths = write(f"{name}-short" if quick else name, document, markdown(document))
    print(f"{name}: wrote " + " and ".join(paths), file=sys.stderr)
    return 1 if document["errors"] else 0


def without(reruns: list, measured) -> list:
    """The earlier reruns less the figures measured again (a rerun left with none goes): each
    figure is listed under the run its numbers come from, once.

    >>> without([{"figures": ["a", "b"]}, {"figures": ["a"]}], ["a"])
    [{'figures': ['b']}]
    """
    kept = ({**run, "figures": [f for f in run["figures"] if f not in measured]}
            for run in reruns)
    return [run for run in kept if run["figures"]]


def fold(name: str, quick: bool, document: dict, started: float, markdown) -> int:
    """Like finish, for a run of some figures only (`--only`): they replace their entries in the
    last document of the same mode, the other figures stay as they were measured, and the run
    is listed under `reruns` (when, on what machine, which figures), so a reader can tell which
    numbers come from which run. Without an earlier document it is written as it is."""
    path = os.path.join(RESULTS, f"{name}-short.json" if quick else f"{name}.json")
    if not os.path.exists(path):
        return finish(name, quick, document, started, markdown)
    with open(path) as handle:
        previous = json.load(handle)
    measured = sorted(set(document["seconds"]) | set(document["errors"]) - {"interrupted"})
    for key in ("figures", "errors", "seconds"):
        kept = {k: v for k, v in previous.get(key, {}).items() if k not in measured}
        previous[key] = {**kept, **document[key]}
    previous["reruns"] = without(previous.get("reruns", []), measured)
    previous["reruns"].append({
        "figures": measured, "started_at": document["started_at"], "finished_at": stamp(),
        "duration_s": round(time.monotonic() - started, 1),
        "machine_at_start": document["machine_at_start"], "machine_at_end": machine()})
    paths = write(f"{name}-short" if quick else name, previous, markdown(previous))
    print(f"{name}: folded {', '.join(measured)} into " + " and ".join(paths), file=sys.stderr)
    return 1 if document["errors"] else 0
