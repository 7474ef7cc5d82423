"""What imagegate tells its operator: readiness (:mod:`.health`), Prometheus metrics
(:mod:`.metrics`, :mod:`.multiprocess`), structured logs (:mod:`.logs`), and the small HTTP port a
standalone worker answers them on (:mod:`.server`).

Below ``api/`` and ``runtime/``, above the store: the API, the worker and the webhook deliverer
call in here; nothing here calls them.
"""
