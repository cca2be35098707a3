"""The node's alert feeds over HTTP: an Atom feed of active alerts and each alert as CAP 1.2.

This is the form CAP aggregators (IPAWS, Google Public Alerts) consume. The feed shows what the
caller's identity may read under the sharing policy, as every other reader of the node.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.alertfeed import atom_feed
from adapters.cap import ADAPTER as CAP
from adapters.errors import AdapterError
from gateway.errors import YiwangError

if TYPE_CHECKING:
    from gateway.node import Node
    from gateway.service import GatewayService, Peer

PAGE = 1_000


def _peer(service: GatewayService, request: web.Request) -> Peer:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return service.peer_of(x509.load_der_x509_certificate(der) if der else None)


async def _alerts(service: GatewayService, peer: Peer) -> list[pb.Envelope]:
    """Every retained alert the peer may read, oldest first."""
    alerts: list[pb.Envelope] = []
    request = gw.QueryRequest(filter=gw.Filter(kinds=[pb.ALERT]), page_size=PAGE)
    while True:
        reply = gw.QueryReply.FromString(await service.query_bytes(request, peer))
        alerts += [d.envelope for d in reply.deliveries]
        if not reply.next_page_token:
            return alerts
        request.page_token = reply.next_page_token


async def atom(request: web.Request, node: Node) -> web.Response:
    service = node.service
    assert service is not None
    try:
        peer = _peer(service, request)
        alerts = await _alerts(service, peer)
    except YiwangError as exc:
        return web.json_response({"error": str(exc)}, status=401 if "certificate" in str(exc) else 400)
    base = f"{request.scheme}://{request.host}"
    body = atom_feed(
        alerts,
        feed_id=f"urn:yiwang:{node.config.node.id}:alerts",
        title=f"{node.config.node.id}: active alerts",
        self_url=f"{base}/feeds/alerts.atom",
        cap_url=lambda env: f"{base}/feeds/alerts/{env.id}.cap",
        now=time.time(),
    )
    return web.Response(body=body, content_type="application/atom+xml", charset="utf-8")


async def cap(request: web.Request, node: Node) -> web.Response:
    service = node.service
    assert service is not None
    envelope_id = request.match_info["id"]
    try:
        peer = _peer(service, request)
        reply = gw.GetReply.FromString(await service.get_bytes(gw.GetRequest(ids=[envelope_id]), peer))
    except YiwangError as exc:
        return web.json_response({"error": str(exc)}, status=401 if "certificate" in str(exc) else 400)
    if not reply.deliveries or reply.deliveries[0].envelope.kind != pb.ALERT:
        return web.json_response({"error": f"no alert {envelope_id} that you may read"}, status=404)
    try:
        body = CAP.open("cap").encode([reply.deliveries[0].envelope])
    except AdapterError as exc:
        return web.json_response({"error": f"cannot be written as CAP: {exc}"}, status=422)
    return web.Response(body=body, content_type="application/cap+xml", charset="utf-8")
