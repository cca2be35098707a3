"""Who may look at the web command picture: users, their sessions, and the rate limit on logging in.

A user is a person on duty who signs in with a name and password instead of a client certificate.
Each user stands for one policy identity (region, agency, role, name), the same ``gateway.pki.Identity``
a certificate carries, so the sharing policy decides what the user sees exactly as it decides for a
certificate. The node keeps users and sessions in SQLite under its data directory:

- passwords are hashed with scrypt (``hashlib.scrypt``), each with its own random salt; the cost
  parameters are stored with the hash, so raising them later leaves older hashes checkable;
- a session is a random token the browser holds in a cookie; the node stores only its SHA-256, with
  its expiry and the session's CSRF token, so a copy of the database lets nobody sign in;
- failed logins are counted per user and per client address; past the limit the login is refused
  with how long to wait, even with the right password.
"""

from __future__ import annotations

import argparse
import base64
import functools
import getpass
import hashlib
import hmac
import ipaddress
import secrets
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.pki import Identity, Role
from gateway.regions import default_table, is_well_formed

if TYPE_CHECKING:
    from gateway.config import NodeConfig

#: Roles a person may hold; gateways, adapters and terminals sign in with certificates only.
USER_ROLES = (Role.PLATFORM, Role.DEPARTMENT)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
MIN_PASSWORD = 8


class WebAuthError(ValueError):
    """A user or password that cannot be accepted; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """scrypt's parameters: n (CPU/memory cost, a power of two), r (block size), p (parallelism)."""

    n: int = 1 << 15
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        return 128 * self.n * self.r * self.p + (1 << 20)


def hash_password(password: str, cost: ScryptCost | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), with a fresh 16-byte salt."""
    cost = cost or ScryptCost()
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=cost.n, r=cost.r, p=cost.p, maxmem=cost.maxmem, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${cost.n}${cost.r}${cost.p}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash of ``hash_password`` (in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        cost = ScryptCost(int(n), int(r), int(p))
        expected = base64.b64decode(digest)
        salt_bytes = base64.b64decode(salt)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode(), salt=salt_bytes, n=cost.n, r=cost.r, p=cost.p, maxmem=cost.maxmem, dklen=len(expected)
    )
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    region: str
    agency: str
    role: Role

    def identity(self, trust_domain: str) -> Identity:
        return Identity(trust_domain, self.region, self.agency, self.role, self.name)


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires_ns: int


def check_user(name: str, region: str, agency: str, role: str, agencies: frozenset[str]) -> User:
    """A user record, each field checked; raises WebAuthError naming the field."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS or not name[0].isalnum():
        raise WebAuthError(f"user name {name[:40]!r}: lower-case letters, digits and ._- only, up to 64")
    if not is_well_formed(region) or region not in default_table():
        raise WebAuthError(f"region {region!r} is not a known GB/T 2260 code")
    if agency not in agencies:
        raise WebAuthError(f"agency {agency!r} is not an agency code of this network")
    if role not in {r.value for r in USER_ROLES}:
        raise WebAuthError(f"role {role!r}: a user is one of {', '.join(r.value for r in USER_ROLES)}")
    return User(name, region, agency, Role(role))


class UserStore:
    """Users and sessions in one SQLite file; every method is short and may run in a worker thread."""

    def __init__(self, path: Path, *, cost: ScryptCost | None = None) -> None:
        self.path = path
        self.cost = cost or ScryptCost()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, password TEXT NOT NULL, region TEXT NOT NULL,"
            " agency TEXT NOT NULL, role TEXT NOT NULL, created_ns INTEGER NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (token_sha256 BLOB PRIMARY KEY, user TEXT NOT NULL,"
            " csrf TEXT NOT NULL, created_ns INTEGER NOT NULL, expires_ns INTEGER NOT NULL)"
        )
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- users --------------------------------------------------------------------------------------

    def add(self, user: User, password: str) -> None:
        _check_password_text(password)
        hashed = hash_password(password, self.cost)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                    (user.name, hashed, user.region, user.agency, user.role.value, time.time_ns()),
                )
            except sqlite3.IntegrityError:
                raise WebAuthError(f"user {user.name!r} exists already") from None

    def set_password(self, name: str, password: str) -> None:
        """Changes a user's password and ends the user's sessions."""
        _check_password_text(password)
        hashed = hash_password(password, self.cost)
        with self._lock:
            changed = self._db.execute("UPDATE users SET password = ? WHERE name = ?", (hashed, name)).rowcount
            if not changed:
                raise WebAuthError(f"no user {name!r}")
            self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def remove(self, name: str) -> None:
        with self._lock:
            if not self._db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise WebAuthError(f"no user {name!r}")
            self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute("SELECT name, region, agency, role FROM users ORDER BY name").fetchall()
        return [User(n, r, a, Role(role)) for n, r, a, role in rows]

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is right; None otherwise (an unknown name costs the same time)."""
        with self._lock:
            row = self._db.execute(
                "SELECT password, region, agency, role FROM users WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            check_password(password, _decoy(self.cost))  # so that timing does not tell which names exist
            return None
        stored, region, agency, role = row
        if not check_password(password, stored):
            return None
        return User(name, region, agency, Role(role))

    # -- sessions -----------------------------------------------------------------------------------

    def open_session(self, user: User, hours: float) -> tuple[str, Session]:
        """A new session: the token for the cookie (never stored) and the session."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time_ns()
        expires = now + int(hours * 3600e9)
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires_ns < ?", (now,))
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (_token_hash(token), user.name, csrf, now, expires)
            )
        return token, Session(user, csrf, expires)

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token, or None (unknown, expired, or its user removed)."""
        if not token or len(token) > 128:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT s.csrf, s.expires_ns, u.name, u.region, u.agency, u.role FROM sessions s"
                " JOIN users u ON u.name = s.user WHERE s.token_sha256 = ?",
                (_token_hash(token),),
            ).fetchone()
        if row is None:
            return None
        csrf, expires, name, region, agency, role = row
        if expires < time.time_ns():
            return None
        return Session(User(name, region, agency, Role(role)), csrf, expires)

    def close_session(self, token: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_token_hash(token),))


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _check_password_text(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise WebAuthError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise WebAuthError("a password may have at most 1024 characters")


@functools.cache
def _decoy(cost: ScryptCost) -> str:
    """A hash no password matches, checked for unknown names so they take as long as known ones."""
    return hash_password(secrets.token_urlsafe(16), cost)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(addresses: Iterable[str]) -> tuple[Network, ...]:
    """``[web] trusted_proxies`` as networks (a bare address is a network of one)."""
    return tuple(ipaddress.ip_network(a, strict=False) for a in addresses)


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(remote: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The address a request comes from: the peer's, unless the peer is a trusted reverse proxy; then
    X-Forwarded-For is read from its end back (each proxy appends the address it was reached from)
    past the trusted proxies, and the first address that is not one of them is the client's. What a
    client writes into the header itself stands before that and is never believed."""
    peer = remote or ""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop[:64]
        peer = hop
    return peer  # every hop a trusted proxy: the first of them is as near the client as is known


class LoginLimiter:
    """Failed logins per user and per client address in a sliding window; past the limit, wait."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds to wait before any of ``keys`` may try again (0: may try now)."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            failures = self._failures.get(key)
            if failures is None:
                continue
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(failures) >= self.attempts:
                wait = max(wait, failures[0] + self.window_s - now)
            if not failures:
                del self._failures[key]
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


# -- the `yiwang user` commands ------------------------------------------------------------------------


def users_db(config: NodeConfig) -> Path:
    """Where a node keeps its users: ``[web] users_db`` (relative to the config file) or the data dir."""
    web = config.web
    return config.path(web.users_db) if web.users_db else config.data_dir / "web-users.sqlite"


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("password: ")
    second = getpass.getpass("again: ")
    if first != second:
        raise WebAuthError("the two passwords differ")
    return first


def _user_command(args: argparse.Namespace) -> int:
    from gateway import config as config_module  # noqa: PLC0415 - config imports nothing of ours back
    from gateway.cli import CommandError  # noqa: PLC0415 - the CLI imports this module

    config = config_module.load(Path(args.config))
    store = UserStore(users_db(config))
    try:
        if args.user_command == "add":
            user = check_user(args.name, args.region, args.agency, args.role, config.all_agencies)
            store.add(user, _read_password(args))
            sys.stdout.write(f"added {user.name}: {user.role.value} of {user.agency} in {user.region}\n")
        elif args.user_command == "passwd":
            store.set_password(args.name, _read_password(args))
            sys.stdout.write(f"changed the password of {args.name}; their sessions are closed\n")
        elif args.user_command == "remove":
            store.remove(args.name)
            sys.stdout.write(f"removed {args.name}\n")
        else:
            for user in store.users():
                sys.stdout.write(f"{user.name}\t{user.role.value}\t{user.agency}\t{user.region}\n")
    except WebAuthError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``yiwang user add|passwd|remove|list``: the people who may sign in to the web command picture."""
    p = sub.add_parser(
        "user",
        parents=[common],
        help="manage the users of the web command picture",
        description="Users sign in to the web command picture; each stands for a policy identity "
        "(region, agency, role). Passwords are read from the terminal, or one line of stdin with "
        "--password-stdin; never from the command line.",
    )
    users = p.add_subparsers(dest="user_command", required=True, metavar="USER_COMMAND")
    for name, text in (
        ("add", "add a user"),
        ("passwd", "set a user's password (their sessions end)"),
        ("remove", "remove a user"),
        ("list", "list the users"),
    ):
        q = users.add_parser(name, help=text)
        q.add_argument("--config", metavar="FILE", required=True, help="the node's TOML configuration")
        if name != "list":
            q.add_argument("name", metavar="NAME")
        if name in ("add", "passwd"):
            q.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        if name == "add":
            q.add_argument("--region", required=True, metavar="CODE", help="the user's GB/T 2260 region")
            q.add_argument("--agency", required=True, help="the user's agency code, e.g. emergency")
            q.add_argument("--role", default="platform", choices=[r.value for r in USER_ROLES], help="default platform")
        q.set_defaults(run=_user_command)
