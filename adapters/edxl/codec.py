"""EDXL-DE 1.0 and 2.0 distribution envelopes in: the CAP alerts they carry, each with its routing.

Sans-IO: ``EdxlCodec.decode`` takes the bytes of one ``<EDXLDistribution>`` (1.0) or
``<edxlDistribution>`` (2.0) and returns one ALERT envelope per embedded CAP ``<alert>``, read by the
CAP codec, with ``Envelope.distribution`` set from the distribution element.

Content that is not CAP (for example the French health hub's ``urn:emergency:eda:1.9`` case
messages) is refused with kind ``unsupported``, naming its namespace: the canonical model has no
payload for a medical case file, and carrying it as an alert would let it be read as a warning.
A distribution is taken whole or not at all, so that one bad content object is never half-delivered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from yiwang.v1 import envelope_pb2 as pb

from adapters import safexml
from adapters.cap.codec import FORMAT_OF_NAMESPACE, CapConfig, decode_alert, parse_circle, parse_polygon, parse_time
from adapters.errors import AdapterError
from adapters.plugin import AdapterConfig, AdapterContext
from gateway.validation import Validator

EDXL_DE_1_0 = "urn:oasis:names:tc:emergency:EDXL:DE:1.0"
EDXL_DE_2_0 = "urn:oasis:names:tc:emergency:EDXL:DE:2.0"
VERSION_OF_NAMESPACE = {EDXL_DE_1_0: "1.0", EDXL_DE_2_0: "2.0"}
_ROOT_OF_VERSION = {"1.0": "EDXLDistribution", "2.0": "edxlDistribution"}


@dataclass(frozen=True, kw_only=True)
class EdxlConfig(AdapterConfig):
    """Options of the EDXL-DE adapter, besides agency, region and system."""

    max_document_bytes: int = field(
        default=safexml.MAX_XML_BYTES, metadata={"doc": "largest EDXL-DE document accepted, in bytes"}
    )
    max_place_distance_km: float = field(
        default=50.0,
        metadata={"doc": "as for the CAP adapter: how far an alert area may lie from a known place to take its region"},
    )


class EdxlCodec:
    """Sans-IO EDXL-DE reader: one distribution in, the envelopes of the alerts it carries out."""

    def __init__(self, config: EdxlConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.cap_config = CapConfig(
            agency=config.agency or "emergency",
            region=config.region,
            system=config.system or "edxl-de",
            max_document_bytes=config.max_document_bytes,
            max_place_distance_km=config.max_place_distance_km,
        )
        self.validator = Validator(context.regions)

    def decode(self, data: bytes) -> list[pb.Envelope]:
        root = safexml.parse(data, limit=self.config.max_document_bytes)
        version = _version(root)
        distribution = _distribution(root, version)
        envelopes = []
        for path, alert in _alerts(root, version):
            env = decode_alert(
                alert, config=self.cap_config, context=self.context, document=data, path=path, validator=self.validator
            )
            env.distribution.CopyFrom(distribution)
            envelopes.append(env)
        if not envelopes:
            raise AdapterError("carries no content object", field=_ROOT_OF_VERSION[version], kind="missing")
        return envelopes

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:
        raise AdapterError(
            f"the EDXL-DE adapter only reads; export these {len(envelopes)} alerts with the CAP adapter",
            kind="unsupported",
        )


def _version(root: Element) -> str:
    ns = safexml.namespace(root.tag)
    version = VERSION_OF_NAMESPACE.get(ns)
    if version is None:
        known = ", ".join(VERSION_OF_NAMESPACE)
        raise AdapterError(f"namespace {ns!r} is not EDXL-DE ({known})", field=root.tag, kind="unsupported")
    if safexml.local_name(root.tag) != _ROOT_OF_VERSION[version]:
        raise AdapterError(
            f"the root element is <{safexml.local_name(root.tag)}>, not <{_ROOT_OF_VERSION[version]}>",
            field=safexml.local_name(root.tag),
            kind="unsupported",
        )
    return version


def _children(element: Element, name: str) -> list[Element]:
    """Children by local name (EDXL-DE 2.0 mixes its own namespace with the common types one)."""
    return [child for child in element if safexml.local_name(child.tag) == name]


def _text(element: Element, name: str, path: str, *, required: bool = False) -> str:
    found = _children(element, name)
    value = (found[0].text or "").strip() if found else ""
    if required and not value:
        raise AdapterError("required", field=f"{path}.{name}", kind="missing")
    return value


def _distribution(root: Element, version: str) -> pb.Distribution:
    path = _ROOT_OF_VERSION[version]
    out = pb.Distribution(version=version)
    out.distribution_id = _text(root, "distributionID", path, required=True)
    out.sender_id = _text(root, "senderID", path, required=True)
    sent = _text(root, "dateTimeSent", path, required=True)
    out.sent.CopyFrom(parse_time(sent, f"{path}.dateTimeSent")[0])
    expires = _text(root, "dateTimeExpires", path)
    if expires:
        out.expires.CopyFrom(parse_time(expires, f"{path}.dateTimeExpires")[0])
    out.status = _text(root, "distributionStatus", path, required=True)
    out.kind = _text(root, "distributionType" if version == "1.0" else "distributionKind", path, required=True)
    out.combined_confidentiality = _text(root, "combinedConfidentiality", path)
    # 2.0 moved language, addresses and keywords into <descriptor>; 1.0 has them on the root.
    holders = [root, *_children(root, "descriptor")]
    for holder in holders:
        out.language = out.language or _text(holder, "language", path)
        for address in _children(holder, "explicitAddress"):
            scheme = _text(address, "explicitAddressScheme", f"{path}.explicitAddress", required=True)
            values = _children(address, "explicitAddressValue")
            if not values:
                raise AdapterError("required", field=f"{path}.explicitAddress.explicitAddressValue", kind="missing")
            out.recipients.extend(pb.NamedValue(name=scheme, value=(v.text or "").strip()) for v in values)
        for keyword in _children(holder, "keyword"):
            list_name = _text(keyword, "valueListUrn", path) or _text(keyword, "valueListURI", path)
            out.keywords.extend(
                pb.NamedValue(name=list_name, value=(v.text or "").strip()) for v in _children(keyword, "value")
            )
    for i, area in enumerate(_children(root, "targetArea")):
        _target_area(area, f"{path}.targetArea[{i}]", out)
    return out


def _target_area(area: Element, path: str, out: pb.Distribution) -> None:
    for child in area:
        name = safexml.local_name(child.tag)
        text = (child.text or "").strip()
        if name == "polygon":
            out.target_area.polygons.append(parse_polygon(text, f"{path}.polygon"))
        elif name == "circle":
            out.target_area.circles.append(parse_circle(text, f"{path}.circle"))
        elif name in {"country", "subdivision", "locCodeUN"} and text:
            out.target_regions.append(text)


def _alerts(root: Element, version: str) -> Iterator[tuple[str, Element]]:
    """Each embedded CAP alert with its field path; refuses content that is not CAP."""
    path = _ROOT_OF_VERSION[version]
    objects = _children(root, "contentObject")
    for content in _children(root, "content"):  # 2.0 wraps its content objects
        objects.extend(_children(content, "contentObject"))
    for i, content_object in enumerate(objects):
        object_path = f"{path}.contentObject[{i}]"
        holders = _children(content_object, "xmlContent") + _children(content_object, "contentXML")
        if not holders:
            raise AdapterError(
                "carries no XML content (non-XML content cannot become a canonical alert)",
                field=object_path,
                kind="unsupported",
            )
        for holder in holders:
            embedded = _children(holder, "embeddedXMLContent")
            if not embedded:
                raise AdapterError("no embeddedXMLContent", field=f"{object_path}.embeddedXMLContent", kind="missing")
            for j, wrapper in enumerate(embedded):
                wrapper_path = f"{object_path}.embeddedXMLContent[{j}]"
                if not len(wrapper):
                    raise AdapterError("is empty", field=wrapper_path, kind="missing")
                for element in wrapper:
                    ns = safexml.namespace(element.tag)
                    if ns not in FORMAT_OF_NAMESPACE:
                        raise AdapterError(
                            f"carries <{safexml.local_name(element.tag)}> of namespace {ns!r}, which is not CAP; "
                            "only CAP alerts are taken from EDXL-DE",
                            field=wrapper_path,
                            kind="unsupported",
                        )
                    yield f"{wrapper_path}.alert", element
