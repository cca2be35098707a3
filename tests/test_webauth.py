"""Signing in to the web command picture: passwords, sessions, CSRF, rate limits, certificates, CLI."""

from __future__ import annotations

import io
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from yarl import URL

from gateway import cli, logsetup
from gateway.config import NodeConfig
from gateway.errors import ConfigError
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.tls import ClientTls
from gateway.webauth import (
    ScryptCost,
    User,
    UserStore,
    WebAuthError,
    check_password,
    client_address,
    hash_password,
    trusted_networks,
    users_db,
)
from tests.conftest import NodeFactory, node_config, running_tls_node

DOMAIN = "yjt.henan.gov.cn"
PASSWORD = "correct horse battery"
CHEAP = ScryptCost(n=1 << 12)  # test users only: the node's own default is 2**15


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority.init(tmp_path / "pki", trust_domain=DOMAIN)
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.PLATFORM, "410100", "zz-desk", "emergency"))
    return ca


def add_users(config: NodeConfig) -> None:
    store = UserStore(users_db(config), cost=CHEAP)
    store.add(User("duty-zz", "410100", "emergency", Role.PLATFORM), PASSWORD)
    store.add(User("duty-js", "410105", "emergency", Role.PLATFORM), PASSWORD)
    store.close()


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    web = {"enabled": True, "login_attempts": 3, "login_window_s": 600.0, "session_hours": 2.0}
    async with running_tls_node(pki, tmp_path / "data", web=web) as running:
        add_users(running.config)
        yield running


def browser(node: Node, pki: Authority, *, certificate: str = "") -> aiohttp.ClientSession:
    if certificate:
        issued = pki.dir / "issued"
        context = ClientTls(pki.dir / "ca.pem", issued / f"{certificate}.chain.pem", issued / f"{certificate}.key")
        tls = context.ssl_context()
    else:
        tls = ssl.create_default_context(cafile=str(pki.dir / "ca.pem"))
    return aiohttp.ClientSession(
        f"https://127.0.0.1:{node.http_port}",
        connector=aiohttp.TCPConnector(ssl=tls),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # the node is reached by IP address
    )


def test_passwords_are_salted_scrypt_hashes_with_their_parameters() -> None:
    first, second = hash_password(PASSWORD, CHEAP), hash_password(PASSWORD, CHEAP)
    assert first.startswith(f"scrypt${1 << 12}$8$1$")
    assert first != second  # each hash has its own salt
    assert check_password(PASSWORD, first)
    assert not check_password(PASSWORD + "!", first)
    assert not check_password(PASSWORD, "md5$abc")


def test_users_are_checked_before_they_are_stored(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.sqlite", cost=CHEAP)
    try:
        store.add(User("duty-zz", "410100", "emergency", Role.PLATFORM), PASSWORD)
        with pytest.raises(WebAuthError, match="exists already"):
            store.add(User("duty-zz", "410100", "emergency", Role.PLATFORM), PASSWORD)
        with pytest.raises(WebAuthError, match="at least 8"):
            store.add(User("short", "410100", "emergency", Role.PLATFORM), "1234567")
        assert store.verify("duty-zz", PASSWORD) == User("duty-zz", "410100", "emergency", Role.PLATFORM)
        assert store.verify("duty-zz", "wrong password") is None
        assert store.verify("nobody", PASSWORD) is None
        token, session = store.open_session(User("duty-zz", "410100", "emergency", Role.PLATFORM), 1.0)
        assert store.session(token) == session
        raw = (tmp_path / "users.sqlite").read_bytes() + (tmp_path / "users.sqlite-wal").read_bytes()
        assert token.encode() not in raw  # only the token's hash is kept
        store.set_password("duty-zz", "another password")
        assert store.session(token) is None  # a new password ends the sessions
    finally:
        store.close()


async def test_login_opens_a_strict_session_that_logout_ends(node: Node, pki: Authority) -> None:
    async with browser(node, pki) as session:
        async with session.post("/picture/api/login", json={"user": "duty-zz", "password": PASSWORD}) as reply:
            assert reply.status == 200
            body = await reply.json()
            cookie = reply.headers["Set-Cookie"]
        assert body["identity"] == {
            "uri": f"spiffe://{DOMAIN}/410100/emergency/platform/duty-zz",
            "region": "410100",
            "agency": "emergency",
            "role": "platform",
            "name": "duty-zz",
        }
        assert cookie.startswith("yiwang_session=")
        for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/picture"):
            assert flag in cookie
        async with session.get("/picture/api/me") as reply:
            me = await reply.json()
            assert me == {"identity": body["identity"], "csrf": body["csrf"], "login": True}
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert reply.headers["Referrer-Policy"] == "no-referrer"
            assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
        async with session.post("/picture/api/logout") as reply:
            assert reply.status == 403  # no CSRF token
        async with session.post("/picture/api/logout", headers={"X-CSRF-Token": "forged"}) as reply:
            assert reply.status == 403
        async with session.post("/picture/api/logout", headers={"X-CSRF-Token": body["csrf"]}) as reply:
            assert reply.status == 204
        async with session.get("/picture/api/me") as reply:
            assert reply.status == 401


async def test_failed_logins_are_limited_per_user_and_per_address(node: Node, pki: Authority) -> None:
    async with browser(node, pki) as session:
        for _ in range(3):
            async with session.post("/picture/api/login", json={"user": "duty-zz", "password": "nope nope"}) as reply:
                assert reply.status == 401
                assert (await reply.json())["error"] == "wrong user name or password"
        async with session.post("/picture/api/login", json={"user": "duty-zz", "password": PASSWORD}) as reply:
            assert reply.status == 429  # even the right password waits now
            body = await reply.json()
            assert 0 < body["retry_after_s"] <= 600
            assert reply.headers["Retry-After"] == str(body["retry_after_s"])
        async with session.post("/picture/api/login", json={"user": "duty-js", "password": PASSWORD}) as reply:
            assert reply.status == 429  # the address tried too often as well
        async with session.post("/picture/api/login", data=b"not json") as reply:
            assert reply.status == 400


async def test_a_client_certificate_is_an_identity_without_login(node: Node, pki: Authority) -> None:
    async with browser(node, pki, certificate="zz-desk") as session:
        async with session.get("/picture/api/me") as reply:
            me = await reply.json()
        assert me["login"] is False
        assert me["identity"]["uri"] == f"spiffe://{DOMAIN}/410100/emergency/platform/zz-desk"
        async with session.get("/healthz") as reply:
            assert reply.status == 200  # the node's own routes, as before, with a certificate
        async with session.get("/picture/", allow_redirects=False) as reply:
            assert reply.status in (200, 404)  # the page itself, when picture-page has installed it


async def test_insecure_loopback_mode_has_a_development_identity_and_says_so(start_node: NodeFactory) -> None:
    with capture_logs() as logs:
        node = await start_node(web={"enabled": True})
    assert any(e["event"] == "web_picture_insecure" and e["log_level"] == "warning" for e in logs)
    session = aiohttp.ClientSession(f"http://127.0.0.1:{node.http_port}")
    async with session, session.get("/picture/api/me") as reply:
        me = await reply.json()
    assert me["login"] is False
    assert me["identity"]["region"] == "410000"
    assert me["identity"]["name"] == "developer"


def test_the_user_command_adds_lists_and_removes_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nid = "henan-province"\nregion = "410000"\n[log]\ndata_dir = "data"\n[tls]\ninsecure = true\n'
        "[web]\nenabled = true\n",
        encoding="utf-8",
    )
    # the CLI points the log at this test's captured stderr, which closes when the test ends
    monkeypatch.setattr(logsetup, "configure", lambda *_args, **_kwargs: None)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    args = ["user", "add", "duty-zz", "--config", str(config), "--region", "410100", "--agency", "emergency"]
    assert cli.main([*args, "--password-stdin"]) == 0
    assert cli.main(["user", "list", "--config", str(config)]) == 0
    assert "duty-zz\tplatform\temergency\t410100" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main([*args[:5], "--region", "999999", "--agency", "emergency", "--password-stdin"]) == 2
    assert "region '999999' is not a known" in capsys.readouterr().err
    assert cli.main(["user", "remove", "duty-zz", "--config", str(config)]) == 0
    assert cli.main(["user", "remove", "duty-zz", "--config", str(config)]) == 2
    assert "no user 'duty-zz'" in capsys.readouterr().err
    store = UserStore(tmp_path / "data" / "web-users.sqlite")
    try:
        assert store.users() == []
    finally:
        store.close()


async def test_page_files_come_with_a_strict_policy_and_only_from_their_folder(node: Node, pki: Authority) -> None:
    async with browser(node, pki) as session:
        async with session.get("/picture/login") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self'")
        async with session.get("/picture/vendor/echarts.min.js") as reply:
            assert reply.status == 200, "node_modules/echarts is missing: `make test` installs it (npm ci)"
            assert reply.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert b"echarts" in await reply.read()
        for sneaky in ("/picture/static/..%2F..%2Fwebauth.py", "/picture/static/%2E%2E%2F%2E%2E%2Fnode.py"):
            async with session.get(URL(sneaky, encoded=True)) as reply:
                assert reply.status == 404, sneaky
        async with session.get("/", allow_redirects=False) as reply:
            assert reply.status == 302
            assert reply.headers["Location"] == "/picture/"


def test_only_a_trusted_proxy_says_where_a_login_comes_from() -> None:
    proxies = trusted_networks(["127.0.0.1", "10.1.0.0/16"])
    # no proxy trusted, or a peer that is not one: the header is the client's own word, not believed
    assert client_address("127.0.0.1", ["198.51.100.9"], ()) == "127.0.0.1"
    assert client_address("192.0.2.4", ["198.51.100.9"], proxies) == "192.0.2.4"
    # a trusted proxy: the address it appended; what the client wrote before it does not count
    assert client_address("127.0.0.1", ["198.51.100.9"], proxies) == "198.51.100.9"
    assert client_address("127.0.0.1", ["6.6.6.6, 198.51.100.9"], proxies) == "198.51.100.9"
    # proxies in a row: back past each trusted one, also over several headers
    assert client_address("127.0.0.1", ["6.6.6.6, 198.51.100.9", "10.1.2.3"], proxies) == "198.51.100.9"
    assert client_address("127.0.0.1", ["not-an-address, 10.1.2.3"], proxies) == "not-an-address"
    assert client_address("127.0.0.1", ["10.1.2.3"], proxies) == "10.1.2.3"  # only proxies: the first known
    assert client_address("127.0.0.1", [], proxies) == "127.0.0.1"


@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_a_trusted_proxy_logins_are_limited_per_client(start_node: NodeFactory, trusted: bool) -> None:
    web: dict[str, Any] = {"enabled": True, "login_attempts": 2}
    if trusted:
        web["trusted_proxies"] = ["127.0.0.1"]  # the test plays the reverse proxy on loopback
    node = await start_node(web=web)
    store = UserStore(users_db(node.config), cost=ScryptCost(n=1 << 12))
    for name in ("duty-a", "duty-b", "duty-c"):
        store.add(User(name, "410100", "emergency", Role.PLATFORM), PASSWORD)
    store.close()

    async def login(session: aiohttp.ClientSession, user: str, password: str, client: str) -> int:
        headers = {"X-Forwarded-For": f"6.6.6.6, {client}"}  # the first part is what the client claimed
        async with session.post("/picture/api/login", json={"user": user, "password": password}, headers=headers) as r:
            return r.status

    async with aiohttp.ClientSession(f"http://127.0.0.1:{node.http_port}") as session:
        for user in ("duty-a", "duty-b"):  # two users, one client: the client's address is limited
            assert await login(session, user, "wrong password", "198.51.100.9") == 401
        assert await login(session, "duty-c", PASSWORD, "198.51.100.9") == 429
        # another client behind the same proxy
        expected = 200 if trusted else 429  # untrusted: every login comes from the proxy's one address
        assert await login(session, "duty-c", PASSWORD, "198.51.100.10") == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trusted_proxies", ["10.0.0.1", "proxy.example"]),
        ("checkpoint_max", -1),
        ("checkpoint_every_envelopes", 0),
        ("checkpoint_every_min", 0.0),
        ("checkpoint_max_mb", -5.0),
    ],
)
def test_bad_web_settings_are_named(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"web.{key}"):
        node_config(tmp_path, web={"enabled": True, key: value})
