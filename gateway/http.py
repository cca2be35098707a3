"""The node's HTTP side port: ``/healthz`` for load balancers and people, ``/metrics`` for Prometheus."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from gateway.node import Node
    from gateway.web import PictureSite

NODE_KEY: web.AppKey[Node] = web.AppKey("node")


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    log_ = node.log
    healthy = log_ is not None and not log_.closed and getattr(log_, "_writer_failure", None) is None
    adapters = node.adapters.health() if node.adapters is not None else {}
    degraded = any(not a["ok"] for a in adapters.values())
    body = {
        "status": ("degraded" if degraded else "ok") if healthy else "failing",
        "node": node.config.node.id,
        "level": node.config.level,
        "region": node.config.node.region,
        "log": {
            "ok": healthy,
            "oldest_offset": log_.oldest_offset if log_ else 0,
            "next_offset": log_.next_offset if log_ else 0,
        },
        "adapters": adapters,
    }
    return web.json_response(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.Response(body=node.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def terminals(request: web.Request) -> web.Response:
    """The field terminals this node hears over MQTT: liveness, session, link, drops they reported."""
    node = request.app[NODE_KEY]
    if node.ingest is None:
        return web.json_response({"error": "this node runs no MQTT ingest ([mqtt] broker)"}, status=404)
    return web.json_response({"terminals": node.ingest.report()})


async def push(request: web.Request) -> web.Response:
    """An input for an inbound adapter with an http-push source, answered once it is durable."""
    node = request.app[NODE_KEY]
    if node.adapters is None:
        return web.json_response({"error": "this node runs no adapters"}, status=404)
    return await node.adapters.push(request)


async def alert_feed(request: web.Request) -> web.Response:
    """The Atom feed of the active alerts the caller may read."""
    from adapters import feeds  # noqa: PLC0415 - the adapters load only when their routes are used

    return await feeds.atom(request, request.app[NODE_KEY])


async def alert_cap(request: web.Request) -> web.Response:
    """One alert as CAP 1.2."""
    from adapters import feeds  # noqa: PLC0415

    return await feeds.cap(request, request.app[NODE_KEY])


class HttpSide:
    def __init__(self, node: Node) -> None:
        self.app = web.Application()
        self.app[NODE_KEY] = node
        self.app.router.add_get("/healthz", healthz)
        self.app.router.add_get("/metrics", metrics)
        self.app.router.add_post("/adapters/{name}/push", push)
        self.app.router.add_get("/terminals", terminals)
        self.app.router.add_get("/feeds/alerts.atom", alert_feed)
        self.app.router.add_get("/feeds/alerts/{id}.cap", alert_cap)
        self.picture: PictureSite | None = None
        if node.config.web.enabled:
            from gateway.web import mount  # noqa: PLC0415 - only nodes that serve the web picture load it

            self.picture = mount(self.app, node)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listens (with TLS when given a context); returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        assert server is not None
        sockets = getattr(server, "sockets", ())
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
