"""How jobs look to clients: the status objects of every protocol, rendered from a job.

Below both ``api/`` (responses) and ``webhooks/`` (payloads), so the two always agree.
"""
