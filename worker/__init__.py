"""Ferry's RQ worker: the job entry points (worker.jobs) and the worker process (python -m worker)."""
