"""Outbound connections to URLs a client chose (input images, LoRAs, datasets, webhooks).

The network policy lives here, once: which addresses may be reached (:class:`AddressPolicy`),
name resolution with a timeout, connections pinned to the checked addresses, and the one httpx
transport that both the input fetcher and the webhook deliverer send through. Nothing here knows
about requests, jobs or HTTP statuses; callers decide what a refusal means for them.
"""

from imagegate.network.addresses import LOOPBACK_NAMES, AddressPolicy, is_loopback_host, literal_address
from imagegate.network.transport import GuardedTransport, guarded_client

__all__ = [
    "LOOPBACK_NAMES",
    "AddressPolicy",
    "GuardedTransport",
    "guarded_client",
    "is_loopback_host",
    "literal_address",
]
