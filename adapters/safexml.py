"""Parsing XML from outside without letting it reach anything: no DTDs, no entities, no external
references, no XInclude, bounded size.

Built on defusedxml (the maintained hardening of the standard library's parsers) rather than our
own checks: it refuses DTDs and entity declarations inside the parser itself, where a pre-scan of
the text could be fooled by encodings.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, ParseError

import defusedxml
from defusedxml import ElementTree as SafeElementTree

from adapters.errors import AdapterError

MAX_XML_BYTES = 4 << 20
XINCLUDE_NS = "{http://www.w3.org/2001/XInclude}"


_DECLARATION = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _as_utf8(data: bytes) -> bytes:
    """Chinese systems still write GB2312/GBK/GB18030 documents, which expat cannot read: those are
    decoded here (GB18030 reads all three) and handed on as UTF-8 with the declaration changed."""
    match = _DECLARATION.match(data[:256])
    if not match:
        return data
    declared = match.group(1).decode("ascii").lower()
    if declared not in {"gb2312", "gbk", "gb18030", "cp936"}:
        return data
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise AdapterError(f"not {declared} text: {exc.reason}", offset=exc.start, kind="encoding") from None
    start, end = match.span(1)
    return (data[:start].decode("ascii") + "UTF-8" + text[end:]).encode("utf-8")


def parse(data: bytes, *, limit: int = MAX_XML_BYTES) -> Element:
    """The document's root element; AdapterError naming the problem for anything else."""
    if len(data) > limit:
        raise AdapterError(f"document of {len(data)} bytes, more than the limit of {limit}", kind="size")
    if not data.strip():
        raise AdapterError("empty document", kind="xml")
    data = _as_utf8(data)
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden:
        raise AdapterError("a DTD (<!DOCTYPE>) is not accepted", kind="hostile") from None
    except defusedxml.EntitiesForbidden:
        raise AdapterError("entity declarations are not accepted", kind="hostile") from None
    except defusedxml.ExternalReferenceForbidden:
        raise AdapterError("external references are not accepted", kind="hostile") from None
    except defusedxml.DefusedXmlException as exc:
        raise AdapterError(f"refused: {exc}", kind="hostile") from None
    except ParseError as exc:  # its message names the line and column
        raise AdapterError(f"not well-formed XML: {exc}", kind="xml") from None
    except (ValueError, LookupError) as exc:  # e.g. an unknown encoding in the XML declaration
        raise AdapterError(f"cannot read the document: {exc}", kind="encoding") from None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith(XINCLUDE_NS):
            raise AdapterError("XInclude is not accepted", field=local_name(element.tag), kind="hostile")
    return root


def local_name(tag: str) -> str:
    """``{namespace}name`` -> ``name``."""
    return tag.rsplit("}", 1)[-1]


def namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def escape_text(text: str) -> str:
    """``text`` escaped for element content. ``\r`` is escaped too: a parser turns a raw one into
    ``\n``, which would change the value read back."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def escape_attribute(text: str) -> str:
    """``text`` escaped for a double-quoted attribute value; ``\n`` and ``\t`` too, which a parser
    would read back as spaces."""
    return escape_text(text).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
