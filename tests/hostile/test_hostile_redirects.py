"""Redirects into private address space, at the fetcher.

Through the server this cannot be shown: with private URLs refused, the only hosts a test can
run are loopback ones, so the *first* hop is already refused (test_hostile_corpus covers that).
Here the real :class:`InputFetcher` trusts exactly one loopback address, 127.0.0.2, as an
operator would trust an in-cluster store (``allow_networks``); a redirector on that address
then points at addresses nobody trusts. Every hop must be refused before a connection is made.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from imagegate.exceptions import InputError
from imagegate.media.inputs import InputFetcher

from .support import HostileHost, small_png, start_hostile_host

TRUSTED = "127.0.0.2"


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def trusted_host() -> Iterator[HostileHost]:
    if not _can_bind(TRUSTED):
        pytest.skip(f"cannot bind {TRUSTED} (loopback aliases are a Linux feature)")
    host = start_hostile_host(TRUSTED)
    host.add("ok.png", small_png())
    yield host
    host.close()


@pytest.fixture(scope="module")
def victim(hostile_host: HostileHost) -> HostileHost:
    """A host on 127.0.0.1 with a real file: a refused redirect must not reach it."""
    hostile_host.add("secret.png", small_png((1, 2, 3)))
    return hostile_host


@pytest.fixture()
def fetcher() -> InputFetcher:
    return InputFetcher(allow_private=False, max_bytes=1024 * 1024, timeout=5, allow_networks=[f"{TRUSTED}/32"])


def test_trusted_network_is_fetched(fetcher: InputFetcher, trusted_host: HostileHost) -> None:
    assert fetcher.fetch_bytes(trusted_host.url("/img/ok.png"), field="image_url") == small_png()
    # ...and redirects inside it are followed, so the refusals below are about the target.
    assert fetcher.fetch_bytes(trusted_host.redirect(trusted_host.url("/img/ok.png")), field="image_url") == small_png()


def test_direct_loopback_is_refused(fetcher: InputFetcher, victim: HostileHost) -> None:
    before = len(victim.hits)
    with pytest.raises(InputError) as err:
        fetcher.fetch_bytes(victim.url("/img/secret.png"), field="image_url")
    assert err.value.field == "image_url"
    assert "address 127.0.0.1 is private or loopback" in str(err.value)
    assert victim.hits[before:] == []


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_cloud_metadata_is_refused(fetcher: InputFetcher, trusted_host: HostileHost, code: int) -> None:
    target = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with pytest.raises(InputError) as err:
        fetcher.fetch_bytes(trusted_host.redirect(target, code), field="image_url")
    message = str(err.value)
    assert err.value.field == "image_url"
    assert message.startswith("image_url: redirect to http://169.254.169.254/latest/meta-data/")
    assert "link-local (where cloud metadata services live)" in message


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://127.0.0.1:{port}/img/secret.png", "address 127.0.0.1 is private or loopback"),
        ("http://localhost:{port}/img/secret.png", "is private or loopback"),
        ("http://[::1]:{port}/img/secret.png", "address ::1 is private or loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/img/secret.png", "private or loopback"),
        ("http://2130706433:{port}/img/secret.png", "address 127.0.0.1 is private or loopback"),
        ("http://0.0.0.0:{port}/img/secret.png", "is unspecified"),
        ("http://10.0.0.1/x.png", "address 10.0.0.1 is private or loopback"),
        ("http://100.64.0.1/x.png", "carrier-grade NAT"),
        ("http://[fe80::1]/x.png", "link-local"),
    ],
)
def test_redirect_to_private_address_is_refused(
    fetcher: InputFetcher, trusted_host: HostileHost, victim: HostileHost, target: str, reason: str
) -> None:
    port = victim.base_url.rsplit(":", 1)[1]
    before = len(victim.hits)
    with pytest.raises(InputError) as err:
        fetcher.fetch_bytes(trusted_host.redirect(target.format(port=port)), field="images[1]")
    message = str(err.value)
    assert err.value.field == "images[1]"
    assert message.startswith("images[1]: redirect to ") and "refused" in message, message
    assert reason in message, message
    assert victim.hits[before:] == []  # refused before any connection


def test_refusal_on_a_later_hop(fetcher: InputFetcher, trusted_host: HostileHost) -> None:
    chain = trusted_host.redirect(trusted_host.redirect("http://169.254.169.254/latest/meta-data/", 307), 301)
    with pytest.raises(InputError) as err:
        fetcher.fetch_bytes(chain, field="image")
    assert "redirect to http://169.254.169.254/latest/meta-data/ refused" in str(err.value)

