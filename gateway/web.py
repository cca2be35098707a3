"""The web command picture's routes on the node's HTTP listener (``[web] enabled``).

Who is looking is decided per request, in this order: the client certificate the browser presented
on the TLS listener (the same identity a gRPC client with that certificate has), else a signed-in
session (``gateway.webauth``), else, only on a plaintext loopback node (``tls.insecure``), a
development identity of the node's own region. Whatever the identity, what it sees is filtered by
the sharing policy exactly as its gRPC Subscribe stream would be (see ``gateway.picture``).

The page itself (``gateway/web/static``) is plain files; every response under ``/picture`` carries a
strict Content-Security-Policy, and the page makes no request to any other host.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import mimetypes
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shapely
import structlog
from aiohttp import web
from cryptography import x509
from google.protobuf.json_format import MessageToDict
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.boundaries import Boundaries, default_boundaries
from gateway.errors import InvalidRequestError, UnauthenticatedError
from gateway.picture import (
    KIND_NAMES,
    CheckpointPolicy,
    Limits,
    Picture,
    PictureState,
    Scope,
    leaves_at,
    ms,
    terminal_record,
)
from gateway.pki import Identity, Role
from gateway.regions import Level, is_well_formed, level_of
from gateway.service import Peer
from gateway.webauth import LoginLimiter, Session, UserStore, client_address, trusted_networks, users_db

if TYPE_CHECKING:
    from gateway.federation import LinkView
    from gateway.node import Node

log = structlog.get_logger("yiwang.web")

COOKIE = "yiwang_session"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
SEVERITY_NAMES = {"blue": pb.BLUE, "yellow": pb.YELLOW, "orange": pb.ORANGE, "red": pb.RED}
BATCH_INTERVAL_S = 0.2
KEEPALIVE_S = 15.0
LINK_POLL_S = 2.0
LEFT_LONG_AGO_MS = 60_000  # a new stream tells of what left by the clock this recently (see stream)
MAP_TOLERANCE_DEG = 0.005
MAX_LOGIN_BYTES = 4096
STATIC_DIR = Path(__file__).parent / "web" / "static"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, and how they proved it."""

    identity: Identity
    session: Session | None  # None: a client certificate or the insecure development identity
    token: str = ""


VIEWER: web.RequestKey[Viewer] = web.RequestKey("viewer", Viewer)


class PictureSite:
    """The picture, the user store and the routes of one node."""

    def __init__(self, node: Node) -> None:
        assert node.service is not None
        assert node.log is not None
        self.node = node
        self.service = node.service
        cfg = node.config
        self.tls = not cfg.tls.insecure
        self.trust_domain = self.service.trust_domain or "local"
        self.store = UserStore(users_db(cfg))
        self.limiter = LoginLimiter(cfg.web.login_attempts, cfg.web.login_window_s)
        self.proxies = trusted_networks(cfg.web.trusted_proxies)  # whose X-Forwarded-For is believed
        self.session_hours = cfg.web.session_hours
        self.window_h = cfg.web.window_h
        repository = Path(__file__).resolve().parent.parent
        vendor = cfg.path(cfg.web.vendor_dir) if cfg.web.vendor_dir else repository / "node_modules"
        self.echarts = vendor / "echarts" / "dist" / "echarts.min.js"
        self.picture = Picture(
            node.log,
            self.service.regions,
            window_s=cfg.web.window_h * 3600,
            boundaries=default_boundaries,
            limits=_station_limits(node),
            checkpoints=CheckpointPolicy(
                cfg.data_dir / "picture-checkpoints",
                every_envelopes=cfg.web.checkpoint_every_envelopes,
                every_s=cfg.web.checkpoint_every_min * 60,
                max_count=cfg.web.checkpoint_max,
                max_bytes=int(cfg.web.checkpoint_max_mb * (1 << 20)),
            ),
        )
        self.developer = (
            None if self.tls else Identity(self.trust_domain, cfg.node.region, "emergency", Role.PLATFORM, "developer")
        )
        self._secret = secrets.token_bytes(32)
        self._maps: dict[str, bytes] = {}
        self._map_lock = asyncio.Lock()
        self._streams: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, _app: web.Application) -> None:
        await self.picture.start()
        if self.developer is not None:
            log.warning(
                "web_picture_insecure",
                message="tls.insecure: the web command picture is open WITHOUT LOGIN on this loopback listener, "
                f"as the development identity {self.developer.uri}; never run it like this in service",
            )
        log.info("web_picture_serving", users_db=str(self.store.path), tls=self.tls)

    async def shutdown(self, _app: web.Application) -> None:
        await self.picture.stop()  # open streams see it closed and end

    async def cleanup(self, _app: web.Application) -> None:
        await asyncio.to_thread(self.store.close)

    # -- identities -----------------------------------------------------------------------------

    async def viewer(self, request: web.Request) -> Viewer | None:
        """Who is asking; None when nobody signed in. A bad certificate raises UnauthenticatedError."""
        cert = _peer_certificate(request)
        if cert is not None:
            peer = self.service.peer_of(cert)
            assert peer.identity is not None
            return Viewer(peer.identity, None)
        token = request.cookies.get(COOKIE, "")
        if token:
            session = await asyncio.to_thread(self.store.session, token)
            if session is not None:
                return Viewer(session.user.identity(self.trust_domain), session, token)
        if self.developer is not None:
            return Viewer(self.developer, None)
        return None

    def csrf_of(self, viewer: Viewer) -> str:
        if viewer.session is not None:
            return viewer.session.csrf
        return hmac.new(self._secret, viewer.identity.uri.encode(), hashlib.sha256).hexdigest()

    def scope(self, viewer: Viewer, query: Any = None) -> Scope:
        """What ``viewer`` sees under the policy, narrowed by the query's region, agency, kind, severity."""
        query = query or {}
        kinds: list[pb.Kind] = []
        for name in filter(None, query.get("kind", "").split(",")):
            if name not in KIND_NAMES:
                raise InvalidRequestError("kind", f"{name[:20]!r} is not one of {', '.join(KIND_NAMES)}")
            kinds.append(KIND_NAMES[name])
        agencies = [a for a in query.get("agency", "").split(",") if a]
        severity = query.get("severity", "")
        if severity and severity not in SEVERITY_NAMES:
            raise InvalidRequestError("severity", f"{severity[:20]!r} is not one of blue, yellow, orange, red")
        selector = self.service.selector(gw.Filter(kinds=kinds, agencies=agencies), Peer(viewer.identity, None))
        regions = self.service.regions
        region = query.get("region") or None
        if region is not None:
            if not is_well_formed(region) or region not in regions:
                raise InvalidRequestError("region", f"{region[:20]!r} is not a known GB/T 2260 code")
            if not regions.is_within(region, viewer.identity.region):
                raise PermissionError(f"{region} is outside your region {viewer.identity.region}")
        return Scope(
            selector.allows,
            region=region,
            ancestors=frozenset(int(c) for c in regions.ancestors(region)) if region else frozenset(),
            min_severity=SEVERITY_NAMES.get(severity, 0),
            regions=regions,
        )

    # -- pages ----------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        try:
            viewer = await self.viewer(request)
        except UnauthenticatedError as exc:
            return _error(401, str(exc))
        if viewer is None:
            raise web.HTTPFound("/picture/login")
        return self._file(STATIC_DIR / "index.html")

    async def login_page(self, _request: web.Request) -> web.StreamResponse:
        return self._file(STATIC_DIR / "login.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        wanted = request.match_info["path"]
        base = STATIC_DIR.resolve()
        path = (base / wanted).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return _error(404, f"no file {wanted[:80]!r}")
        return self._file(path)

    async def echarts_js(self, _request: web.Request) -> web.StreamResponse:
        if not self.echarts.is_file():
            return _error(503, f"{self.echarts} is missing: run `make` (npm ci) or set [web] vendor_dir")
        return self._file(self.echarts)

    @staticmethod
    def _file(path: Path) -> web.StreamResponse:
        if not path.is_file():
            return _error(404, f"{path.name} is not installed")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    # -- auth -----------------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_LOGIN_BYTES:
            return _error(413, "a login is a small JSON object")
        try:
            body = json.loads(await request.content.read(MAX_LOGIN_BYTES))
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'the body must be JSON: {"user": ..., "password": ...}')
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("user"), str)
            or not isinstance(body.get("password"), str)
        ):
            return _error(400, 'the body must be JSON: {"user": ..., "password": ...}')
        name, password = body["user"][:64], body["password"][:1024]
        address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.proxies)
        keys = (f"user:{name}", f"address:{address}")
        wait = self.limiter.retry_after(*keys)
        if wait > 0:
            seconds = math.ceil(wait)
            log.warning("web_login_throttled", user=name, address=address, retry_after_s=seconds)
            return web.json_response(
                {"error": f"too many failed logins; try again in {seconds} s", "retry_after_s": seconds},
                status=429,
                headers={"Retry-After": str(seconds)},
            )
        user = await asyncio.to_thread(self.store.verify, name, password)
        if user is None:
            self.limiter.failed(*keys)
            self.node.metrics.auth_failures.inc()
            log.warning("web_login_failed", user=name, address=address)
            if self.node.audit is not None:
                self.node.audit.record("web_login_failed", user=name, address=address)
            return _error(401, "wrong user name or password")
        self.limiter.succeeded(keys[0])
        token, session = await asyncio.to_thread(self.store.open_session, user, self.session_hours)
        identity = user.identity(self.trust_domain)
        log.info("web_login", user=name, identity=identity.uri, address=address)
        if self.node.audit is not None:
            self.node.audit.record("web_login", user=name, identity=identity.uri, address=address)
        response = web.json_response({"identity": _identity(identity), "csrf": session.csrf})
        response.set_cookie(
            COOKIE,
            token,
            path="/picture",
            httponly=True,
            samesite="Strict",
            secure=self.tls,
            max_age=int(self.session_hours * 3600),
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        if viewer.session is not None:
            await asyncio.to_thread(self.store.close_session, viewer.token)
            log.info("web_logout", user=viewer.session.user.name)
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/picture")
        return response

    async def me(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        return web.json_response(
            {"identity": _identity(viewer.identity), "csrf": self.csrf_of(viewer), "login": viewer.session is not None}
        )

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every API call but login needs a viewer, and every one that changes something its CSRF token.
        On a TLS listener, the node's other routes still need a client certificate."""
        path = request.path
        if path.startswith("/picture/api/") and path != "/picture/api/login":
            try:
                viewer = await self.viewer(request)
            except UnauthenticatedError as exc:
                return _error(401, str(exc))
            if viewer is None:
                return _error(401, "sign in first (POST /picture/api/login) or present a client certificate")
            if request.method not in ("GET", "HEAD") and not hmac.compare_digest(
                request.headers.get("X-CSRF-Token", ""), self.csrf_of(viewer)
            ):
                return _error(403, "missing or wrong X-CSRF-Token header")
            request[VIEWER] = viewer
            try:
                return await handler(request)
            except InvalidRequestError as exc:
                return _error(400, str(exc))
            except PermissionError as exc:
                return _error(403, str(exc))
        if self.tls and path != "/" and not path.startswith("/picture") and _peer_certificate(request) is None:
            return _error(401, "this route needs a client certificate")
        return await handler(request)

    async def headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/" or request.path.startswith("/picture"):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if request.path.startswith("/picture/api/"):
                response.headers.setdefault("Cache-Control", "no-store")

    # -- data -----------------------------------------------------------------------------------

    def _region_of(self, viewer: Viewer, scope: Scope) -> str:
        return scope.region or viewer.identity.region

    async def snapshot(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        scope = self.scope(viewer, request.query)
        now = int(time.time() * 1000)
        at_text = request.query.get("at")
        window_h = min(_number(request.query.get("window_h"), "window_h", self.window_h), self.window_h)
        live = at_text is None
        if live:
            state, offset, at = self.picture.state, self.picture.position, now
        else:
            at = int(_number(at_text, "at", now))
            state, offset = await self.picture.build_at(at)
        lists = state.snapshot(scope.admits, at, at - int(window_h * 3_600_000))
        if live:
            lists["terminals"] = self._live_terminals(lists["terminals"], scope)
        region = self._region_of(viewer, scope)
        body = {
            "offset": offset,
            "at": at,
            "region": region,
            "region_name": self.service.regions.name(region),
            **lists,
            "links": await self.links() if live and self.sees_links(viewer) else [],
        }
        return _json(body)

    def _live_terminals(self, known: list[dict[str, Any]], scope: Scope) -> list[dict[str, Any]]:
        """The log's terminals, with what the edge ingest knows now (drops, liveness) added."""
        ingest = self.node.ingest
        if ingest is None:
            return known
        by_id = {t["id"]: dict(t) for t in known}
        for report in ingest.report():
            if not scope.admits(terminal_record(report["region"], report["agency"])):
                continue
            entry = by_id.setdefault(
                report["terminal"],
                {"id": report["terminal"], "region": report["region"], "lat": None, "lon": None, "offset": None},
            )
            entry["link"] = report["link"] or entry.get("link")
            entry["state"] = {"online": "alive", "stale": "stale", "offline": "dead"}.get(report["state"], "stale")
            entry["last_seen"] = int(report["last_seen"] * 1000) if report["last_seen"] else entry.get("last_seen")
            entry["session"] = report["session"]
            entry["drops"] = report["drops"]
        return list(by_id.values())

    def sees_links(self, viewer: Viewer) -> bool:
        """The node's own links are shown to the identities of its whole region (or above) only."""
        return self.service.regions.is_within(self.node.config.node.region, viewer.identity.region)

    async def links(self) -> list[dict[str, Any]]:
        """The node's links and their state now (what is not measured is null)."""
        node = self.node
        out: list[dict[str, Any]] = []
        views = []
        if node.parent_link is not None:
            views.append(node.parent_link.view())
        if node.federation is not None:
            views += node.federation.links()
        for view in views:
            lag, backlog = await self._behind(view)
            if view.up:
                detail = f"linked with {view.peer}" if view.kind == "parent" else "linked"
            elif view.down_since is not None:
                detail = f"down for {int(time.monotonic() - view.down_since)} s"
            else:
                detail = f"not linked yet with {view.peer}"
            name = "parent" if view.kind == "parent" else view.name  # a node has one parent: the page names it so
            out.append(_link(name, view.kind, up=view.up, detail=detail, lag=lag, backlog=backlog))
        if node.ingest is not None:
            up = node.ingest.subscribed.is_set()
            out.append(_link("mqtt", "broker", up=up, detail=node.config.mqtt.broker))
        if node.adapters is not None:
            for name, health in sorted(node.adapters.health().items()):
                detail = str(health.get("last_error") or health.get("format") or "")
                out.append(_link(name, "adapter", up=bool(health.get("ok")), detail=detail))
        for protocol, port in sorted(node.station_ports.items()):
            out.append(_link(protocol, "station-server", up=True, detail=f"listening on port {port}"))
        for transport, port in sorted(node.tak_ports.items()):
            out.append(_link(f"tak-{transport}", "tak", up=True, detail=f"listening on port {port}"))
        return out

    async def _behind(self, view: LinkView) -> tuple[int | None, int | None]:
        """How far a link is behind the log: (lag, backlog). The backlog is the log's envelopes past the
        link's acknowledged position (sent and not acknowledged yet, or not sent yet; while the link is
        down, all that arrived since); the lag is the age in whole seconds of the oldest of them (0 when
        there are none). Both are None when the link's position is not known."""
        log_ = self.node.log
        assert log_ is not None
        acked = view.acked if view.acked is not None else await log_.load_position(view.cursor)
        if acked is None:
            return None, None
        backlog = max(log_.next_offset - max(acked, log_.oldest_offset), 0)
        if not backlog:
            return 0, 0
        found = await log_.read(max(acked, log_.oldest_offset), 1)
        if not found:
            return None, backlog
        return max(int((time.time_ns() - found[0].appended_ns) / 1e9), 0), backlog

    async def stream(self, request: web.Request) -> web.StreamResponse:
        viewer = request[VIEWER]
        scope = self.scope(viewer, request.query)
        # Last-Event-ID wins: EventSource reconnects with its first URL (and its from=) plus this header
        start = request.headers.get("Last-Event-ID") or request.query.get("from")
        position = int(_number(start, "from", self.picture.position)) if start else self.picture.position
        if position < 0:
            raise InvalidRequestError("from", "must not be negative")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        picture = self.picture
        state = picture.state
        sent_links: dict[str, dict[str, Any]] = {}
        with_links = self.sees_links(viewer)
        # what the viewer has (or had from the snapshot) that leaves by the clock, not by the log:
        # warnings at their expiry, incidents a while after their final report
        # (those that left long ago were not in any snapshot the viewer can resume from)
        long_ago = time.time() * 1000 - LEFT_LONG_AGO_MS
        leaving = {
            (of, e.item["id"]): when
            for of, group in (("warning", state.warnings.values()), ("incident", state.incidents.values()))
            for e in group
            if (when := leaves_at(of, e.item)) is not None
            and when > long_ago
            and e.since >= state.floor
            and scope.admits(e.record)
        }
        last_write = time.monotonic()
        last_batch = 0.0
        try:
            await response.write(b"retry: 2000\n\n")
            while not picture.closed:
                got = picture.changes_since(position)
                changes, following = got if got is not None else await picture.catch_up(position)
                items = [c.item for c in changes if c.offset >= position and scope.admits(c.record)]
                for item in items:
                    if item["type"] == "remove":
                        leaving.pop((item["of"], item["id"]), None)
                    elif (when := leaves_at(item["type"], item)) is not None:
                        leaving[item["type"], item["id"]] = when
                now_ms = time.time() * 1000
                for of, item_id in [key for key, when in leaving.items() if when <= now_ms]:
                    del leaving[of, item_id]
                    items.append({"offset": -1, "type": "remove", "of": of, "id": item_id})
                for link in await self.links() if with_links else ():
                    if sent_links.get(link["name"]) != link:
                        sent_links[link["name"]] = link
                        items.append({**link, "offset": -1, "type": "link"})
                position = following
                if items:
                    data = json.dumps({"next": position, "items": items}, ensure_ascii=False, separators=(",", ":"))
                    await response.write(f"id: {position}\nevent: batch\ndata: {data}\n\n".encode())
                    last_write = last_batch = time.monotonic()
                if got is None:
                    continue  # caught up to the live picture's floor: read the live changes at once
                idle = time.monotonic() - last_write
                if idle >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
                    idle = 0.0
                await picture.wait(position, min(LINK_POLL_S, KEEPALIVE_S - idle))
                pause = last_batch + BATCH_INTERVAL_S - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # gather what else arrives into the next event
        except (ConnectionResetError, ConnectionError):
            log.debug("web_stream_gone", identity=viewer.identity.uri, position=position)
        return response

    async def item(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        envelope_id = request.match_info["id"]
        peer = Peer(viewer.identity, None)
        reply = gw.GetReply.FromString(await self.service.get_bytes(gw.GetRequest(ids=[envelope_id]), peer))
        if not reply.deliveries:
            return _error(404, f"no envelope {envelope_id[:80]!r} you may read")
        delivery = reply.deliveries[0]
        env = delivery.envelope
        state = self.picture.state
        item = state.find(envelope_id) or _item_of(state, delivery)
        prov = env.provenance
        signature = None
        if prov.HasField("signature"):
            signature = {
                "signer": prov.signature.signer,
                # a TLS node checks every signature before the envelope enters its log
                "verified_by": self.node.config.node.id if self.tls else None,
                "verified": self.tls,
            }
        body = {
            "item": item,
            "envelope": MessageToDict(env),
            "provenance": {
                "origin": {
                    "agency": env.origin.agency,
                    "system": env.origin.system,
                    "region": env.origin.region,
                    "node": env.origin.node,
                    "format": prov.original_format or None,
                },
                "hops": [{"node": hop.node, "at": ms(hop.received_at)} for hop in prov.hops],
                "signature": signature,
            },
            "history": state.steps(envelope_id, self.scope(viewer).admits),
            "offset": delivery.offset,
        }
        return _json(body)

    async def series(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        station_id = request.match_info["id"]
        hours = _number(request.query.get("hours"), "hours", 24.0)
        scope = self.scope(viewer)
        state = self.picture.state
        found = state.station(station_id)
        if found is None or not scope.admits(found[0]):
            return _error(404, f"no station {station_id[:80]!r} you may read")
        station = found[1]
        since = int(time.time() * 1000 - hours * 3_600_000)
        by_metric: dict[str, dict[str, Any]] = {}
        for point in state.points(station_id):
            if point.at < since or not scope.admits(point.record):
                continue
            for metric, name, value, unit in point.values:
                line = by_metric.setdefault(metric, {"metric": metric, "name": name, "unit": unit, "points": []})
                line["points"].append([point.at, value])
        thresholds = []
        for metric, limits in sorted(self.picture.limits.get(station_id, {}).items()):
            if limits.high is not None:
                thresholds.append({"metric": metric, "level": "alarm", "value": limits.high, "label": "上限"})
            if limits.low is not None:
                thresholds.append({"metric": metric, "level": "alarm", "value": limits.low, "label": "下限"})
        return _json({"station": station, "series": list(by_metric.values()), "thresholds": thresholds})

    async def region_map(self, request: web.Request) -> web.Response:
        code = request.match_info["region"]
        if code not in self._maps:
            if not is_well_formed(code) or code not in self.service.regions:
                return _error(404, f"{code[:20]!r} is not a known GB/T 2260 code")
            async with self._map_lock:
                if code not in self._maps:
                    built = await asyncio.to_thread(_region_map, code, self.service.regions)
                    if built is None:
                        return _error(404, f"no boundary data for {code}")
                    self._maps[code] = built
        return web.Response(
            body=self._maps[code],
            content_type="application/geo+json",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    async def region_list(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        regions = self.service.regions
        home = viewer.identity.region
        rows = [{"code": c, "name": regions.name(c), "parent": regions.parent(c)} for c in regions.subtree(home)]
        return _json({"regions": rows})


def _region_map(code: str, regions: Any) -> bytes | None:
    """The GeoJSON of a region's divisions: a province's cities, a city's counties, a county itself."""
    boundaries: Boundaries = default_boundaries()
    groups: dict[str, list[Any]] = {}
    level = level_of(code)
    for county in boundaries.codes():
        if not regions.is_within(county, code):
            continue
        if level is Level.PROVINCE:
            parent = regions.parent(county)
            key = parent if parent is not None and level_of(parent) is Level.CITY else county
        elif level is Level.CITY:
            key = county
        else:
            key = code
        shape = boundaries.polygon(county)
        if shape is not None:
            groups.setdefault(key, []).append(shape)
    if not groups:
        return None
    features = []
    for key, shapes in sorted(groups.items()):
        merged = shapes[0] if len(shapes) == 1 else shapely.union_all(shapes)
        simple = merged.simplify(MAP_TOLERANCE_DEG, preserve_topology=True)
        features.append(
            {
                "type": "Feature",
                "properties": {"code": key, "name": regions.name(key)},
                "geometry": shapely.geometry.mapping(simple),
            }
        )
    collection = {"type": "FeatureCollection", "features": features}
    return json.dumps(collection, ensure_ascii=False, separators=(",", ":")).encode()


def _item_of(state: PictureState, delivery: gw.Delivery) -> dict[str, Any] | None:
    """The item an envelope makes when it is no longer (or never was) in the live picture."""
    env = delivery.envelope
    appended = ms(delivery.appended_at) or 0
    if env.kind == pb.ALERT:
        return state.warning_of(delivery.offset, appended, env)
    if env.kind == pb.INCIDENT:
        return state.incident_of(delivery.offset, appended, env)
    return None


def _station_limits(node: Node) -> dict[str, dict[str, Limits]]:
    """Each registered station's alarm limits by metric ({} when the node has no station registry)."""
    cfg = node.config
    if not cfg.stations.registry:
        return {}
    from gateway.stations import load_registry  # noqa: PLC0415

    assert node.service is not None
    registry = load_registry(cfg.path(cfg.stations.registry), node.service.regions, cfg.all_agencies)
    out: dict[str, dict[str, Limits]] = {}
    for stations in registry.values():
        for station_id, station in stations.items():
            out[station_id] = {m: Limits(lim.low, lim.high) for m, lim in station.limits.items()}
    return out


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def _identity(identity: Identity) -> dict[str, str]:
    return {
        "uri": identity.uri,
        "region": identity.region,
        "agency": identity.principal,
        "role": identity.role.value,
        "name": identity.name,
    }


def _link(
    name: str, kind: str, *, up: bool, detail: str, lag: int | None = None, backlog: int | None = None
) -> dict[str, Any]:
    return {"name": name, "kind": kind, "up": up, "lag": lag, "backlog": backlog, "detail": detail}


def _number(text: str | None, name: str, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError(name, f"{text[:20]!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidRequestError(name, "must be a non-negative number")
    return value


def _json(body: Any) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def mount(app: web.Application, node: Node) -> PictureSite:
    """Adds the picture's routes, its guard and its headers to the node's HTTP application."""
    site = PictureSite(node)
    app.middlewares.append(site.guard)
    app.on_response_prepare.append(site.headers)
    app.on_startup.append(site.start)
    app.on_shutdown.append(site.shutdown)
    app.on_cleanup.append(site.cleanup)
    router = app.router

    async def to_picture(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/picture/")

    router.add_get("/", to_picture)
    router.add_get("/picture", to_picture)
    router.add_get("/picture/", site.index)
    router.add_get("/picture/login", site.login_page)
    router.add_get("/picture/static/{path:.+}", site.static)
    router.add_get("/picture/vendor/echarts.min.js", site.echarts_js)
    router.add_post("/picture/api/login", site.login)
    router.add_post("/picture/api/logout", site.logout)
    router.add_get("/picture/api/me", site.me)
    router.add_get("/picture/api/snapshot", site.snapshot)
    router.add_get("/picture/api/stream", site.stream)
    router.add_get("/picture/api/item/{id}", site.item)
    router.add_get("/picture/api/station/{id}/series", site.series)
    router.add_get("/picture/api/map/{region}", site.region_map)
    router.add_get("/picture/api/regions", site.region_list)
    return site
