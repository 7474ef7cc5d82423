"""The admin API: the operator's and the web console's view of keys, wallets, usage, models, jobs,
webhook deliveries, workers and the audit log (``/admin/v1``, bearer admin token)."""

from imagegate.api.admin.routes import router

__all__ = ["router"]
