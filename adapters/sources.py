"""Where inbound adapters get their input, and where outbound adapters put theirs.

A source yields ``Item``s; each item carries ``done``, which the runner resolves once the item is
in the gateway's log or in the dead-letter store, so a source lets go of its input (moves the
file, answers the HTTP push, remembers the feed's ETag) only when nothing can be lost any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("yiwang.adapters")

MAX_INPUT_BYTES = 16 << 20


@dataclass
class Item:
    data: bytes
    source: str  # file name, URL or pushing identity, for the dead-letter store and the logs
    received: float  # loop time it arrived, for lag
    refused: str = ""  # set when the source itself could not take the input (it says why and where it is)
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an item: envelopes forwarded to the gateway, and whether it was dead-lettered."""

    forwarded: int = 0  # envelopes now in the gateway's log, including those that were there already
    duplicates: int = 0  # of which were there already (the same input sent twice)
    dead_letter: int | None = None  # the letter's id
    reason: str = ""


class FileSource:
    """An inbox directory: each file is one input; once handled it moves to ``done/`` beside it.

    Files are taken oldest first; a file whose name starts with '.' or ends in '.part' is still
    being written (write it under such a name and rename it when complete).
    """

    def __init__(self, directory: Path, interval_s: float = 1.0) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.done_dir = directory / "done"
        self.refused_dir = directory / "refused"

    def _ready(self) -> list[Path]:
        files = [
            p
            for p in self.directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".part")
        ]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    async def items(self) -> AsyncIterator[Item]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(exist_ok=True)
        loop = asyncio.get_running_loop()
        while True:
            for path in await asyncio.to_thread(self._ready):
                size = path.stat().st_size
                if size > MAX_INPUT_BYTES:
                    self.refused_dir.mkdir(exist_ok=True)
                    await asyncio.to_thread(path.replace, self.refused_dir / path.name)
                    reason = f"{size} bytes, more than {MAX_INPUT_BYTES}; the file is kept in refused/{path.name}"
                    item = Item(b"", path.name, loop.time(), refused=reason)
                    yield item
                    await item.done
                    continue
                item = Item(await asyncio.to_thread(path.read_bytes), path.name, loop.time())
                yield item
                await item.done
                await asyncio.to_thread(path.replace, self.done_dir / path.name)
            await asyncio.sleep(self.interval_s)


class PushSource:
    """Inputs pushed to the node's HTTP side (``POST /adapters/NAME/push``); the request is answered
    with the outcome, after it is durable."""

    def __init__(self, max_waiting: int = 64) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue(max_waiting)

    async def push(self, data: bytes, source: str) -> Outcome:
        item = Item(data, source, asyncio.get_running_loop().time())
        await self._queue.put(item)
        return await item.done

    async def items(self) -> AsyncIterator[Item]:
        while True:
            yield await self._queue.get()


class PollSource:
    """An HTTP feed polled every ``interval_s`` with conditional requests (ETag, Last-Modified).

    A fetch that fails is retried on the next poll; the validators are remembered only once the
    body they came with is handled, so an input is never skipped because it was seen once.
    """

    def __init__(
        self, url: str, interval_s: float, *, session: aiohttp.ClientSession | None = None, ssl: Any = None
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self._session = session
        self._ssl = ssl
        self.etag = ""
        self.last_modified = ""
        self.not_modified = 0

    async def items(self) -> AsyncIterator[Item]:
        owned = self._session is None
        session = self._session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        loop = asyncio.get_running_loop()
        try:
            while True:
                headers = {}
                if self.etag:
                    headers["If-None-Match"] = self.etag
                if self.last_modified:
                    headers["If-Modified-Since"] = self.last_modified
                async with session.get(self.url, headers=headers, ssl=self._ssl) as response:
                    if response.status == 304:
                        self.not_modified += 1
                    elif response.status == 200:
                        data = await response.content.read(MAX_INPUT_BYTES + 1)
                        if len(data) > MAX_INPUT_BYTES:
                            raise PollError(f"{self.url}: a body of more than {MAX_INPUT_BYTES} bytes")
                        etag = response.headers.get("ETag", "")
                        modified = response.headers.get("Last-Modified", "")
                        item = Item(data, self.url, loop.time())
                        yield item
                        await item.done
                        self.etag, self.last_modified = etag, modified
                    else:
                        raise PollError(f"{self.url}: HTTP {response.status} {response.reason}")
                await asyncio.sleep(self.interval_s)
        finally:
            if owned:
                await session.close()


class PollError(Exception):
    """The feed did not answer as a feed should; the supervisor retries with backoff."""


class FileSink:
    """Writes each export as a file, atomically (a temporary name, then renamed)."""

    def __init__(self, directory: Path, suffix: str) -> None:
        self.directory = directory
        self.suffix = suffix

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, name, data)

    def _write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200]
        final = self.directory / f"{safe}{self.suffix}"
        temporary = self.directory / f".{safe}{self.suffix}.part"
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(final)


class PostSink:
    """POSTs each export to a URL; anything but 2xx is an error (the runner retries from its position)."""

    def __init__(self, url: str, content_type: str, *, ssl: Any = None) -> None:
        self.url = url
        self.content_type = content_type
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    async def put(self, name: str, data: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        async with self._session.post(
            self.url, data=data, headers={"Content-Type": self.content_type}, ssl=self._ssl
        ) as response:
            if response.status // 100 != 2:
                raise PollError(f"{self.url}: HTTP {response.status} {response.reason} for {name}")

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(aiohttp.ClientError):
                await self._session.close()
            self._session = None
