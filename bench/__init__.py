"""Ferry's proof: benchmarks against bare virsh and the physical limit (`python -m bench`), and a
fault-injection suite (`python -m bench.faults`). Both run on the real lab; see bench/README.md."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
