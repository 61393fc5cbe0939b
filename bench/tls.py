"""The cost of transfer TLS: the same live and offline moves with TLS and in clear, alternating.

The stage's app gets Ferry's CA and node1/node2 their certificates (`pki init` / `pki issue`,
as an operator would). Then one running server and one stopped server (its disk filled with
incompressible data, so the offline copy carries real bytes) go back and forth between node1
and node2: in each pair once with FERRY_TRANSFER_SECURITY=tls and once with plain, the order
alternating so a machine that slows down over time hurts both sides equally.
"""
from __future__ import annotations

from app.services import certificates
from bench.figures import Shuttle
from bench.stats import ratio, summary

OFFLINE_DATA_MIB = 256


def _sides(pair: int) -> tuple[str, str]:
    return ("tls", "plain") if pair % 2 == 0 else ("plain", "tls")


def _fill(stage, node: str, disk: dict, mib: int) -> None:
    """Write mib MiB of random data into the second half of a raw disk (the guest's file
    system lives in the first)."""
    seek = disk["virtual_size"] // 2 ** 20 // 2
    stage.lab.exec(node, "dd", "if=/dev/urandom", f"of={disk['path']}", "bs=1M",
                   f"count={mib}", f"seek={seek}", "conv=notrunc", "status=none", check=True,
                   timeout=300)


def cost(stage, pairs: int, memory: int = 256) -> dict:
    """Live and offline move time with TLS / in clear."""
    with stage.app.app_context():
        certificates.init_ca()
        for node in ("node1", "node2"):
            certificates.issue(node)
    live = stage.server("node1", "bench-tls-live", memory=memory)
    cold = stage.server("node1", "bench-tls-cold", format="raw", stopped=True)
    _fill(stage, "node1", cold["disk"], OFFLINE_DATA_MIB)
    stage.boot(["bench-tls-live"])
    stage.sync()
    shuttles = {"live": Shuttle(stage, "bench-tls-live", "node1", "node2"),
                "offline": Shuttle(stage, "bench-tls-cold", "node1", "node2")}
    rows = {"live": [], "offline": []}
    try:
        for pair in range(pairs):
            for mode, shuttle in shuttles.items():
                row = {}
                for side in _sides(pair):
                    stage.app.config["TRANSFER_SECURITY"] = side
                    row[side] = shuttle.ferry(live=mode == "live")
                both = row["tls"]["ok"] and row["plain"]["ok"]
                row["ratio"] = ratio(row["tls"]["task_s"], row["plain"]["task_s"]) if both else None
                rows[mode].append(row)
    finally:
        stage.app.config["TRANSFER_SECURITY"] = "auto"
    result = {
        "what": "Ferry's task time (run_group, preflight excluded) of the same move with "
                "FERRY_TRANSFER_SECURITY=tls / plain: a live move of a running guest "
                f"({memory} MiB RAM, 1 GiB qcow2) and an offline move of a stopped one (1 GiB raw "
                f"disk holding {OFFLINE_DATA_MIB} MiB of random data), node1 <-> node2, "
                "directions and order alternating.",
        "target": "report only",
    }
    for mode, found in rows.items():
        result[mode] = {
            "ratio": summary(r["ratio"] for r in found),
            "tls_s": summary(r["tls"]["task_s"] for r in found if r["tls"]["ok"]),
            "plain_s": summary(r["plain"]["task_s"] for r in found if r["plain"]["ok"]),
            "pairs": found,
        }
    return result
