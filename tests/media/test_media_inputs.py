"""InputFetcher, the SSRF guard and URL syntax checks, against a real loopback server."""

from __future__ import annotations

import base64
import ipaddress
import socket
import time
import urllib.parse

import pytest

from imagegate.config import Settings
from imagegate.exceptions import AddressRefusedError, InputError, UnresolvableHostError, ValidationError
from imagegate.media.inputs import InputFetcher, check_url
from imagegate.network import AddressPolicy, guarded_client

from .support import BLUE, GREEN, RED, YELLOW, LoopbackServer, TlsMaterial, bilevel_png, unused_port

MiB = 1024 * 1024
FIELD = "image_url"


def close(a: object, b: tuple[int, ...], tol: int = 24) -> bool:
    assert isinstance(a, tuple), a
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.fixture
def loose() -> InputFetcher:
    """Private addresses allowed, as in development: lets the fetcher reach the test server."""
    return InputFetcher(allow_private=True, max_bytes=MiB, max_pixels=10_000_000, timeout=5.0)


@pytest.fixture
def strict() -> InputFetcher:
    return InputFetcher(allow_private=False, max_bytes=MiB, max_pixels=10_000_000, timeout=5.0)


@pytest.fixture
def trusting_loopback_only() -> InputFetcher:
    """Private addresses refused, except 127.0.0.1 itself: the first hop to the test server is
    allowed, so what a redirect points at is what gets judged."""
    return InputFetcher(
        allow_private=False, max_bytes=MiB, max_pixels=10_000_000, timeout=5.0, allow_networks=["127.0.0.1/32"]
    )


def expect_input_error(fn, *args, **kwargs) -> InputError:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert info.value.field == FIELD
    assert str(info.value).startswith(f"{FIELD}: ")
    return info.value


# --------------------------------------------------------------------------------------------
# Fetching real images


@pytest.mark.parametrize("name", ["png", "jpeg", "webp", "gif", "avif", "bmp", "tiff"])
def test_fetches_and_decodes_every_format(loose: InputFetcher, http_server: LoopbackServer, name: str) -> None:
    img = loose.fetch_image(http_server.url(f"/img/{name}"), field=FIELD)
    assert img.mode == "RGB"
    assert img.size == (64, 48)
    tol = 40 if name == "gif" else 24  # GIF quantises to a palette
    assert close(img.getpixel((8, 8)), RED, tol)
    assert close(img.getpixel((56, 8)), GREEN, tol)
    assert close(img.getpixel((8, 40)), BLUE, tol)
    assert close(img.getpixel((56, 40)), YELLOW, tol)


def test_fetch_bytes_returns_the_exact_body(
    loose: InputFetcher, http_server: LoopbackServer, sample_images: dict[str, bytes]
) -> None:
    assert loose.fetch_bytes(http_server.url("/img/png"), field=FIELD) == sample_images["png"]


def test_fetch_mask_is_single_channel(loose: InputFetcher, http_server: LoopbackServer) -> None:
    mask = loose.fetch_mask(http_server.url("/img/png"), field=FIELD)
    assert mask.mode == "L" and mask.size == (64, 48)


def test_connection_is_made_to_the_name_with_its_host_header(loose: InputFetcher, http_server: LoopbackServer) -> None:
    # "localhost" must reach the server by the checked address while the request still names
    # the host (virtual hosting, TLS SNI), not the IP.
    try:
        socket.getaddrinfo("localhost", http_server.port)
    except OSError:
        pytest.skip("localhost does not resolve here")
    body = loose.fetch_bytes(f"http://localhost:{http_server.port}/echo-host", field=FIELD)
    assert body == f"localhost:{http_server.port}".encode()


def test_http_error_status_is_reported(loose: InputFetcher, http_server: LoopbackServer) -> None:
    url = http_server.url("/status/404")
    err = expect_input_error(loose.fetch_bytes, url, field=FIELD)
    assert str(err) == f"{FIELD}: could not fetch {url}: HTTP 404"
    err = expect_input_error(loose.fetch_bytes, http_server.url("/status/503"), field=FIELD)
    assert str(err).endswith("HTTP 503")


def test_non_image_body_is_not_decodable(loose: InputFetcher, http_server: LoopbackServer) -> None:
    err = expect_input_error(loose.fetch_image, http_server.url("/notimage"), field=FIELD)
    assert "is not a decodable image" in str(err)


def test_empty_body_is_refused(loose: InputFetcher, http_server: LoopbackServer) -> None:
    err = expect_input_error(loose.fetch_bytes, http_server.url("/empty"), field=FIELD)
    assert "empty" in str(err)


def test_connection_refused_is_an_input_error(loose: InputFetcher) -> None:
    url = f"http://127.0.0.1:{unused_port()}/x.png"
    err = expect_input_error(loose.fetch_bytes, url, field=FIELD)
    assert f"could not fetch {url}: connection failed" in str(err)


def test_unsupported_schemes_are_refused(loose: InputFetcher) -> None:
    for url in ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x", "/relative.png", ""]:
        expect_input_error(loose.fetch_bytes, url, field=FIELD)


def test_from_settings_uses_the_input_settings() -> None:
    settings = Settings(allow_private_urls=True, max_input_bytes=1234, max_input_pixels=5678, fetch_timeout_seconds=3.5)
    fetcher = InputFetcher.from_settings(settings)
    assert (fetcher.allow_private, fetcher.max_bytes, fetcher.max_pixels, fetcher.timeout) == (True, 1234, 5678, 3.5)


# --------------------------------------------------------------------------------------------
# Size limits


def test_declared_oversize_body_is_refused(loose: InputFetcher, http_server: LoopbackServer) -> None:
    err = expect_input_error(loose.fetch_bytes, http_server.url("/big"), field=FIELD)
    assert str(err) == f"{FIELD}: input is larger than the 1 MB limit"


@pytest.mark.parametrize("route", ["/nolength", "/chunked"])
def test_oversize_body_without_content_length_is_cut_off(
    loose: InputFetcher, http_server: LoopbackServer, route: str
) -> None:
    err = expect_input_error(loose.fetch_bytes, http_server.url(route), field=FIELD)
    assert str(err) == f"{FIELD}: input is larger than the 1 MB limit"


def test_limit_is_named_in_the_message() -> None:
    default = InputFetcher.from_settings(Settings())
    err = expect_input_error(default.fetch_bytes, "data:image/png;base64," + "A" * (34 * MiB), field=FIELD)
    assert str(err) == f"{FIELD}: input is larger than the 25 MB limit"
    odd = InputFetcher(max_bytes=8)
    err = expect_input_error(odd.fetch_bytes, "data:;base64," + base64.b64encode(b"\0" * 16).decode(), field=FIELD)
    assert str(err) == f"{FIELD}: input is larger than the 8 bytes limit"


def test_understated_content_length_never_reads_past_it(loose: InputFetcher, http_server: LoopbackServer) -> None:
    assert loose.fetch_bytes(http_server.url("/understated"), field=FIELD) == b"\1" * 100


def test_body_shorter_than_declared_is_an_error(loose: InputFetcher, http_server: LoopbackServer) -> None:
    err = expect_input_error(loose.fetch_bytes, http_server.url("/overstated"), field=FIELD)
    assert "could not fetch" in str(err)


# --------------------------------------------------------------------------------------------
# Deadlines


@pytest.mark.parametrize("route", ["/slow", "/drip"])
def test_whole_fetch_is_bounded_by_the_timeout(http_server: LoopbackServer, route: str) -> None:
    # /slow never sends a byte; /drip sends one every 50 ms, so no single read ever times out.
    fetcher = InputFetcher(allow_private=True, max_bytes=MiB, max_pixels=10_000_000, timeout=1.0)
    start = time.monotonic()
    err = expect_input_error(fetcher.fetch_bytes, http_server.url(route), field=FIELD)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3.0, elapsed  # /drip alone would take 30 s
    assert "no complete answer within 1 s" in str(err)


# --------------------------------------------------------------------------------------------
# The SSRF guard


def test_loopback_is_refused_unless_allowed(
    strict: InputFetcher, loose: InputFetcher, http_server: LoopbackServer
) -> None:
    url = http_server.url("/img/png")
    err = expect_input_error(strict.fetch_bytes, url, field=FIELD)
    assert str(err) == f"{FIELD}: address 127.0.0.1 is private or loopback; such URLs are refused"
    assert loose.fetch_bytes(url, field=FIELD)


def test_refused_before_any_request_is_sent(strict: InputFetcher, http_server: LoopbackServer) -> None:
    marker = f"/img/png?marker={time.monotonic_ns()}"
    expect_input_error(strict.fetch_bytes, http_server.url(marker), field=FIELD)
    assert marker not in http_server.requests


def test_localhost_name_is_refused(strict: InputFetcher, http_server: LoopbackServer) -> None:
    err = expect_input_error(strict.fetch_bytes, f"http://localhost:{http_server.port}/img/png", field=FIELD)
    assert "is private or loopback" in str(err)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "[fe80::1]",
        "[fc00::1]",
        "[fd12:3456::1]",
        "100.64.0.1",
        "0.0.0.0",
        "[::]",
        "224.0.0.1",
        "[ff02::1]",
        "240.0.0.1",
        "255.255.255.255",
        "[64:ff9b::a9fe:a9fe]",
        "2130706433",
        "0x7f.1",
    ],
)
def test_internal_addresses_are_refused(strict: InputFetcher, host: str) -> None:
    start = time.monotonic()
    err = expect_input_error(strict.fetch_bytes, f"http://{host}:80/latest/meta-data/", field=FIELD)
    assert "such URLs are refused" in str(err)
    assert time.monotonic() - start < 2.5  # refused up front, not after a 5 s connect attempt


def test_metadata_address_message_names_it(strict: InputFetcher) -> None:
    err = expect_input_error(strict.fetch_bytes, "http://169.254.169.254/latest/meta-data/", field=FIELD)
    assert "169.254.169.254 is link-local" in str(err)


@pytest.mark.parametrize(
    "host,expected",
    [
        ("8.8.8.8", "8.8.8.8"),
        ("1.1.1.1", "1.1.1.1"),
        ("2606:4700:4700::1111", "2606:4700:4700::1111"),
        ("[2606:4700:4700::1111]", "2606:4700:4700::1111"),
        ("::ffff:8.8.8.8", "::ffff:808:808"),
    ],
)
def test_public_literals_pass_the_guard(host: str, expected: str) -> None:
    assert AddressPolicy().resolve(host, 443, timeout=10) == [expected]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "169.254.169.254", "10.1.1.1", "::ffff:10.0.0.1", "100.100.100.200"]
)
def test_resolve_public_addresses_refuses_internal(host: str) -> None:
    with pytest.raises(AddressRefusedError, match="such URLs are refused"):
        AddressPolicy().resolve(host, 80, timeout=10)
    (address,) = AddressPolicy(allow_private=True).resolve(host, 80, timeout=10)
    assert ipaddress.ip_address(address) == ipaddress.ip_address(host)


def test_resolve_public_addresses_unresolvable_host() -> None:
    with pytest.raises(UnresolvableHostError, match=r"could not resolve host no-such-host\.invalid"):
        AddressPolicy().resolve("no-such-host.invalid", 80, timeout=10)


class FakeDns:
    """Stands in for the network's resolver (not for the code under test): answers per name,
    a different answer on every call, and counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in self.answers:
            return self._real(host, port, *args, **kwargs)
        n = self.calls.get(host, 0)
        self.calls[host] = n + 1
        ips = self.answers[host][min(n, len(self.answers[host]) - 1)]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]


def test_connection_is_pinned_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, trusting_loopback_only: InputFetcher, http_server: LoopbackServer
) -> None:
    # First answer passes the guard; any later lookup would send us to the metadata service.
    dns = FakeDns(monkeypatch, {"rebind.example": [["127.0.0.1"], ["169.254.169.254"]]})
    data = trusting_loopback_only.fetch_bytes(f"http://rebind.example:{http_server.port}/echo-host", field=FIELD)
    assert data == f"rebind.example:{http_server.port}".encode()
    assert dns.calls["rebind.example"] == 1


def test_any_internal_answer_refuses_the_name(monkeypatch: pytest.MonkeyPatch, strict: InputFetcher) -> None:
    FakeDns(monkeypatch, {"mixed.example": [["8.8.8.8", "10.0.0.7"]]})
    err = expect_input_error(strict.fetch_bytes, "http://mixed.example/img.png", field=FIELD)
    assert "address 10.0.0.7 is private or loopback" in str(err)


# --------------------------------------------------------------------------------------------
# Redirects


def redirect(server: LoopbackServer, to: str, code: int = 302) -> str:
    return server.url(f"/redirect?code={code}&to={urllib.parse.quote(to, safe='')}")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_followed(
    loose: InputFetcher, http_server: LoopbackServer, sample_images: dict[str, bytes], code: int
) -> None:
    url = redirect(http_server, http_server.url("/img/png"), code)
    assert loose.fetch_bytes(url, field=FIELD) == sample_images["png"]


def test_up_to_five_redirects(
    loose: InputFetcher, http_server: LoopbackServer, sample_images: dict[str, bytes]
) -> None:
    assert loose.fetch_bytes(http_server.url("/chain/5"), field=FIELD) == sample_images["png"]
    err = expect_input_error(loose.fetch_bytes, http_server.url("/chain/6"), field=FIELD)
    assert "more than 5 redirects" in str(err)


def test_redirect_to_metadata_address_is_refused(
    trusting_loopback_only: InputFetcher, http_server: LoopbackServer
) -> None:
    # The first hop (127.0.0.1) is trusted; the hop it redirects to must be judged on its own.
    assert trusting_loopback_only.fetch_bytes(http_server.url("/img/png"), field=FIELD)
    start = time.monotonic()
    err = expect_input_error(
        trusting_loopback_only.fetch_bytes,
        redirect(http_server, "http://169.254.169.254/latest/meta-data/"),
        field=FIELD,
    )
    assert time.monotonic() - start < 2.5  # no 5 s connect attempt first
    assert "redirect to http://169.254.169.254/latest/meta-data/ refused" in str(err)
    assert "169.254.169.254 is link-local" in str(err)


def test_redirect_to_other_loopback_address_is_refused(
    trusting_loopback_only: InputFetcher, http_server: LoopbackServer
) -> None:
    err = expect_input_error(
        trusting_loopback_only.fetch_bytes,
        redirect(http_server, f"http://127.0.0.2:{http_server.port}/img/png"),
        field=FIELD,
    )
    assert "address 127.0.0.2 is private or loopback" in str(err)


def test_redirect_to_loopback_is_refused_for_a_strict_fetcher(
    monkeypatch: pytest.MonkeyPatch, trusting_loopback_only: InputFetcher, http_server: LoopbackServer
) -> None:
    # A name that resolves to loopback after a redirect: same refusal as a literal.
    FakeDns(monkeypatch, {"internal.example": [["127.0.0.53"]]})
    err = expect_input_error(
        trusting_loopback_only.fetch_bytes,
        redirect(http_server, f"http://internal.example:{http_server.port}/img/png"),
        field=FIELD,
    )
    assert "address 127.0.0.53 is private or loopback" in str(err)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/"])
def test_redirect_to_non_http_scheme_is_refused(loose: InputFetcher, http_server: LoopbackServer, target: str) -> None:
    err = expect_input_error(loose.fetch_bytes, redirect(http_server, target), field=FIELD)
    assert "only http and https URLs are followed" in str(err)


def test_redirect_to_data_uri_is_not_followed(
    loose: InputFetcher, http_server: LoopbackServer, sample_images: dict[str, bytes]
) -> None:
    target = "data:image/png;base64," + base64.b64encode(sample_images["png"]).decode()
    err = expect_input_error(loose.fetch_bytes, redirect(http_server, target), field=FIELD)
    assert "redirected to an invalid or unsupported URL" in str(err)


# --------------------------------------------------------------------------------------------
# HTTPS


def test_https_verifies_the_certificate_against_the_name(
    monkeypatch: pytest.MonkeyPatch,
    tls_material: TlsMaterial,
    https_server: LoopbackServer,
    sample_images: dict[str, bytes],
) -> None:
    try:
        socket.getaddrinfo("localhost", https_server.port)
    except OSError:
        pytest.skip("localhost does not resolve here")
    url = f"https://localhost:{https_server.port}/img/png"

    untrusting = InputFetcher(allow_private=True, max_bytes=MiB, max_pixels=10_000_000, timeout=5.0)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    err = expect_input_error(untrusting.fetch_bytes, url, field=FIELD)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err)

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_material.ca_file))
    trusting = InputFetcher(allow_private=True, max_bytes=MiB, max_pixels=10_000_000, timeout=5.0)
    # Pinned to the IP, yet SNI and verification use the name: the cert is for "localhost" only.
    assert trusting.fetch_bytes(url, field=FIELD) == sample_images["png"]
    err = expect_input_error(trusting.fetch_bytes, f"https://127.0.0.1:{https_server.port}/img/png", field=FIELD)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err)


# --------------------------------------------------------------------------------------------
# data: URIs


def test_base64_data_uri(loose: InputFetcher, sample_images: dict[str, bytes]) -> None:
    png = sample_images["png"]
    encoded = base64.b64encode(png).decode()
    assert loose.fetch_bytes(f"data:image/png;base64,{encoded}", field=FIELD) == png
    # Line-wrapped, URL-safe alphabet, percent-encoded, upper-case marker, no media type.
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert loose.fetch_bytes(f"data:image/png;base64,{wrapped}", field=FIELD) == png
    assert loose.fetch_bytes(f"data:image/png;base64,{base64.urlsafe_b64encode(png).decode()}", field=FIELD) == png
    assert loose.fetch_bytes(f"data:image/png;base64,{urllib.parse.quote(encoded)}", field=FIELD) == png
    assert loose.fetch_bytes(f"DATA:;BASE64,{encoded}", field=FIELD) == png
    img = loose.fetch_image(f"data:image/png;base64,{encoded}", field=FIELD)
    assert img.size == (64, 48) and close(img.getpixel((8, 8)), RED)


def test_percent_encoded_data_uri(loose: InputFetcher) -> None:
    assert loose.fetch_bytes("data:text/plain,hello%20world%00", field=FIELD) == b"hello world\0"


def test_data_uri_that_is_not_an_image(loose: InputFetcher) -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode()
    err = expect_input_error(loose.fetch_image, uri, field=FIELD)
    assert str(err) == f"{FIELD}: is not a decodable image (JPEG, PNG, WebP, GIF or AVIF)"


def test_truncated_base64_is_refused(loose: InputFetcher, sample_images: dict[str, bytes]) -> None:
    encoded = base64.b64encode(sample_images["png"]).decode()
    err = expect_input_error(loose.fetch_bytes, f"data:image/png;base64,{encoded[:-3]}", field=FIELD)
    assert "not valid base64" in str(err)
    err = expect_input_error(loose.fetch_bytes, "data:image/png;base64,@@@@", field=FIELD)
    assert "not valid base64" in str(err)


def test_base64_of_truncated_image_is_not_decodable(loose: InputFetcher, sample_images: dict[str, bytes]) -> None:
    half = sample_images["png"][: len(sample_images["png"]) // 2]
    err = expect_input_error(loose.fetch_image, "data:image/png;base64," + base64.b64encode(half).decode(), field=FIELD)
    assert "is not a decodable image" in str(err)


def test_malformed_data_uris(loose: InputFetcher) -> None:
    assert "no ','" in str(expect_input_error(loose.fetch_bytes, "data:image/png;base64", field=FIELD))
    assert "no data" in str(expect_input_error(loose.fetch_bytes, "data:image/png;base64,", field=FIELD))


def test_oversize_data_uri(loose: InputFetcher) -> None:
    uri = "data:application/octet-stream;base64," + base64.b64encode(b"\0" * (MiB + 10)).decode()
    err = expect_input_error(loose.fetch_bytes, uri, field=FIELD)
    assert str(err) == f"{FIELD}: input is larger than the 1 MB limit"


def test_data_uri_decompression_bomb_is_input_error(loose: InputFetcher) -> None:
    uri = "data:image/png;base64," + base64.b64encode(bilevel_png(20000, 20000)).decode()
    err = expect_input_error(loose.fetch_image, uri, field=FIELD)
    assert "pixel" in str(err)


# --------------------------------------------------------------------------------------------
# check_url (API-side syntax check)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.png",
        "http://example.com:8080/a/b?c=d#e",
        "https://[2001:db8::1]/x.png",
        "http://xn--bcher-kva.example/x.png",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_check_url_accepts(url: str) -> None:
    check_url(url, field="image_url")


@pytest.mark.parametrize(
    "url,rule",
    [
        ("", "must be an http, https or data: URL"),
        ("ftp://example.com/a.png", "must be an http, https or data: URL"),
        ("file:///etc/passwd", "must be an http, https or data: URL"),
        ("example.com/a.png", "must be an http, https or data: URL"),
        ("https:///a.png", "URL has no host"),
        ("https://example.com/" + "a" * 8200, "URL is longer than 8192 characters"),
        ("https://exa mple.com/a.png", "URL contains whitespace or control characters"),
        ("https://example.com:99999/", "is not a valid URL"),
        ("data:image/png;base64", "is not a valid data: URI (no ',' before the data)"),
    ],
)
def test_check_url_refuses(url: str, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_url(url, field="image_url")
    assert info.value.field == "image_url"
    assert info.value.rule == rule


def test_check_url_can_refuse_data_uris() -> None:
    with pytest.raises(ValidationError) as info:
        check_url("data:image/png;base64,iVBORw0KGgo=", field="webhook_url", allow_data=False)
    assert info.value.rule.startswith("must be an http or https URL")
    check_url("https://example.com/hook", field="webhook_url", allow_data=False)


def test_check_url_does_not_touch_the_network() -> None:
    # Syntax only: an internal or unresolvable host is the worker's business, not the API's.
    check_url("http://169.254.169.254/latest/meta-data/", field="image_url")
    check_url("http://no-such-host.invalid/x.png", field="image_url")


# --------------------------------------------------------------------------------------------
# The shared transport (webhook deliveries go through it too)


def test_guarded_client_applies_the_guard(http_server: LoopbackServer) -> None:
    with guarded_client(AddressPolicy(), timeout=2.0) as client:
        with pytest.raises(AddressRefusedError) as info:
            client.get(http_server.url("/echo-host"))
        assert "127.0.0.1 is private or loopback" in str(info.value)
    with guarded_client(AddressPolicy(allow_private=True), timeout=2.0) as client:
        response = client.get(http_server.url("/echo-host"))
        assert response.status_code == 200
        assert response.text == f"127.0.0.1:{http_server.port}"


def test_guarded_client_raises_httpx_errors(http_server: LoopbackServer) -> None:
    import httpx

    with guarded_client(AddressPolicy(allow_private=True), timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get(http_server.url("/slow"))
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{unused_port()}/")
