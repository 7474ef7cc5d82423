"""How `imagegate serve` serves the console: index.html for every app path, hashed assets cached
for a year, nothing outside the build, a Content-Security-Policy that keeps it on this server."""

from __future__ import annotations

import re

from harness import RunningServer


def test_every_console_path_answers_the_app_revalidated_with_its_security_headers(console_server: RunningServer) -> None:
    with console_server.client() as http:
        for path in ("/ui", "/ui/", "/ui/playground/flux-dev", "/ui/admin/keys"):
            r = http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith("text/html")
            assert '<div id="app">' in r.text
            assert r.headers["cache-control"] == "no-cache"
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "connect-src 'self'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
        assert http.head("/ui/history").status_code == 200


def test_hashed_assets_are_cached_for_a_year_and_a_missing_one_is_a_404_not_the_page(console_server: RunningServer) -> None:
    with console_server.client() as http:
        index = http.get("/ui").text
        assets = re.findall(r'(/ui/assets/[^"]+\.(?:js|css))', index)
        assert {a.rsplit(".", 1)[1] for a in assets} == {"js", "css"}
        for asset in assets:
            r = http.get(asset)
            assert r.status_code == 200
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert r.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript", "text/css")
        missing = http.get("/ui/assets/index-00000000.js")
        assert missing.status_code == 404
        assert missing.json()["message"] == "No console asset 'assets/index-00000000.js'"


def test_no_asset_is_fetched_from_anywhere_but_this_server(console_server: RunningServer) -> None:
    with console_server.client() as http:
        index = http.get("/ui").text
        bundle = "".join(http.get(a).text for a in re.findall(r'(/ui/assets/[^"]+)"', index))
    for text in (index, bundle):
        assert not re.search(r"""(?:src|href)=["']https?://""", text)
        assert "fonts.googleapis" not in text and "cdn." not in text


def test_paths_that_climb_out_of_the_build_get_the_app_never_a_file(console_server: RunningServer) -> None:
    with console_server.client() as http:
        for path in ("/ui/%2e%2e/console.py", "/ui/..%2f..%2fconfig.py", "/ui/%2e%2e/%2e%2e/api/app.py"):
            r = http.get(path)
            assert r.status_code == 200, path
            assert '<div id="app">' in r.text, path


def test_the_root_sends_a_browser_to_the_console(console_server: RunningServer) -> None:
    with console_server.client() as http:
        r = http.get("/", follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"] == "/ui"
