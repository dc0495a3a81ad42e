"""Who may read the dashboard and act on it: the token, CSRF, the Origin and Host checks, the bind rule.

Against ``tether up``'s own dashboard (a child process) with plain HTTP, and ``tether ui`` started
as users start it; the rule for pages beyond loopback in-process (binding a public address in a
test would expose it).
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_processes import Child, cli, stopped_cleanly, user_env
from tether.testing import NatsServer
from tether.ui import bind_refusal, is_loopback
from tether.ui._app import build_app
from tether.ui._security import CSRF_COOKIE, Guard

from .conftest import base

pytestmark = pytest.mark.nats


def token_of(login_url: str) -> str:
    return login_url.rsplit("?token=", 1)[1]


def test_pages_are_open_on_loopback_and_the_login_url_keeps_the_token_in_a_cookie(up: Child) -> None:
    url = base(up.url)
    assert httpx.get(url + "/").status_code == 200
    login = httpx.get(up.url, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert f"tether_ui={token_of(up.url)}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    wrong = httpx.get(url + "/?token=not-the-token", follow_redirects=False)
    assert wrong.status_code == 401 and "wrong token" in wrong.text


def test_an_action_without_the_token_or_with_a_wrong_one_is_refused(up: Child) -> None:
    url = base(up.url)
    page = httpx.get(url + "/dlq")
    csrf = page.cookies[CSRF_COOKIE]
    for auth in ({}, {"cookies": {"tether_ui": "wrong"}}, {"headers": {"authorization": "Bearer wrong"}}):
        cookies = {CSRF_COOKIE: csrf, **auth.get("cookies", {})}
        done = httpx.post(url + "/dlq/1/purge", cookies=cookies, headers={"x-csrf-token": csrf,
                                                                          **auth.get("headers", {})})
        assert done.status_code == 401, auth
        assert "token" in done.text and "?token=" in done.text, "says where the token is"


def test_an_action_without_csrf_or_from_another_origin_is_refused(up: Child) -> None:
    url = base(up.url)
    token = token_of(up.url)
    csrf = httpx.get(url + "/dlq").cookies[CSRF_COOKIE]
    bearer = {"authorization": f"Bearer {token}"}
    missing = httpx.post(url + "/dlq/1/purge", headers=bearer)
    assert missing.status_code == 403 and "CSRF" in missing.text
    mismatched = httpx.post(url + "/dlq/1/purge", cookies={CSRF_COOKIE: csrf}, headers={**bearer, "x-csrf-token": "x"})
    assert mismatched.status_code == 403 and "CSRF" in mismatched.text
    foreign = httpx.post(url + "/dlq/1/purge", cookies={CSRF_COOKIE: csrf},
                         headers={**bearer, "x-csrf-token": csrf, "origin": "http://evil.example"})
    assert foreign.status_code == 403 and "another site" in foreign.text
    allowed = httpx.post(url + "/dlq/999999/purge", cookies={CSRF_COOKIE: csrf},
                         headers={**bearer, "x-csrf-token": csrf, "origin": url})
    assert allowed.status_code == 409 and "no dead letter" in allowed.text, "past the checks: the letter is unknown"
    form = httpx.post(url + "/dlq/999999/purge", cookies={CSRF_COOKIE: csrf, "tether_ui": token},
                      data={"csrf": csrf})
    assert form.status_code == 409, "the form field works too (no scripts)"


def test_a_page_asked_for_under_another_host_name_is_refused(up: Child) -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 cannot read the dashboard."""
    done = httpx.get(base(up.url) + "/", headers={"host": "evil.example"})
    assert done.status_code == 421
    assert httpx.get(base(up.url).replace("127.0.0.1", "localhost") + "/").status_code == 200


def test_pages_have_no_secret_and_forbid_framing(up: Child) -> None:
    page = httpx.get(base(up.url) + "/")
    assert token_of(up.url) not in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_tether_ui_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    done = cli("ui", "--host", "0.0.0.0", "--port", "0", cwd=tmp_path, env=user_env())
    assert done.returncode == 2
    assert "--host 0.0.0.0 is not a loopback address" in done.stderr and "--token" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.anyio
async def test_beyond_loopback_every_page_needs_the_token() -> None:
    guard = Guard(token="s3cret-token", token_for_reads=True)
    app: Any = build_app(None, Path("/nonexistent"), guard)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://10.0.0.5:8470") as client:
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/live")).status_code == 401
        assert (await client.get("/runs/r1")).status_code == 401
        assert (await client.get("/", headers={"authorization": "Bearer wrong"})).status_code == 401
        page = await client.get("/", headers={"authorization": "Bearer s3cret-token"})
        assert page.status_code == 200 and "no traces view yet" in page.text


def test_the_bind_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")
    assert bind_refusal("127.0.0.1", None) is None and bind_refusal("0.0.0.0", "t") is None
    assert "token is required" in (bind_refusal("0.0.0.0", None) or "")


def test_tether_ui_alone_serves_the_views_of_a_home(up: Child, nats: NatsServer, place: Path) -> None:
    env = user_env(TETHER_HOME=str(place / "home"))
    child = Child("ui", "--url", nats.url, "--port", "0", cwd=place, env=env)
    try:
        login = child.wait_for(r"the dashboard is at (http://127\.0\.0\.1:\d+/\?token=\S+)")[1]
        assert child.on_uvloop()
        page = httpx.get(login, follow_redirects=True)
        assert page.status_code == 200 and "<h1>Runs</h1>" in page.text
        assert httpx.get(base(login) + "/static/vendor/htmx/htmx.min.js").status_code == 200
    finally:
        stopped_cleanly(child, sig=signal.SIGINT)
    assert "tether ui stopped." in child.output


def test_tether_ui_help_explains_it() -> None:
    done = cli("ui", "--help", cwd=Path.cwd(), env=user_env())
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for words in ("dead letters to redrive or purge", "SSE", "127.0.0.1", "--token", "CSRF", "docs/ui.md"):
        assert words in text, words


def test_tether_up_no_ui_starts_no_dashboard(nats: NatsServer, tmp_path: Path) -> None:
    child = Child("up", "--url", nats.url, "--no-ui", "--processes", "0", cwd=tmp_path,
                  env=user_env(TETHER_HOME=str(tmp_path / "home")))
    try:
        child.wait_for("tether is up")
    finally:
        stopped_cleanly(child)
    assert "ui:" not in child.output and "dashboard" not in child.output


def test_tether_ui_without_a_nats_server_says_what_to_do(tmp_path: Path) -> None:
    done = cli("ui", "--port", "0", cwd=tmp_path, env=user_env(TETHER_HOME=str(tmp_path / "home")))
    assert done.returncode == 1
    assert "no NATS server" in done.stderr and "tether up" in done.stderr and "Traceback" not in done.stderr


def test_tether_ui_on_a_port_in_use_says_what_to_do(nats: NatsServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = cli("ui", "--url", nats.url, "--port", str(port), cwd=tmp_path,
                   env=user_env(TETHER_HOME=str(tmp_path / "home")))
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr
