"""`unpause` on the start path, straight from the event loop: one POST over a kept-alive
aiohttp connection to the engine, instead of the docker SDK's requests stack in a thread
(measured on a local engine: ~0.5 ms less client time per call, no thread hop). Used by
the docker paused pool and the swarm backend's parked spares. Engines the raw call cannot
reach the way the SDK does (TLS, ssh://, npipe://) keep the SDK call in a thread."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import aiohttp

from backends.docker.engine import ENGINE_CALL_TIMEOUT, Engine, translate
from backends.docker.threads import Threads
from backends.errors import BackendUnavailable, StartError


def raw_base(url: str) -> tuple[str, str | None] | None:
    """(HTTP base URL, unix socket path or None) for an engine URL the raw call supports;
    None for the ones left to the SDK. tcp:// is plain HTTP, as the SDK makes it without TLS."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return "http://docker", parsed.path or "/var/run/docker.sock"
    if parsed.scheme in ("tcp", "http") and parsed.netloc:
        return f"http://{parsed.netloc}", None
    return None


class Unpauser:
    def __init__(self, threads: Threads) -> None:
        self._threads = threads
        self._sessions: dict[str, aiohttp.ClientSession] = {}  # engine URL -> its session

    async def __call__(self, engine: Engine, container_id: str) -> None:
        """Unpause; a refusal raises StartError, a transport failure BackendUnavailable
        (the backends.errors tree either way, as translate() makes it for the SDK)."""
        if engine.client is None:
            raise BackendUnavailable(
                f"Docker engine {engine.url} is not connected", reason="engine_unreachable"
            )
        base = raw_base(engine.url)
        if base is None:
            try:
                await self._threads.call(engine.client.api.unpause, container_id)
            except Exception as exc:
                raise translate(exc, engine.url, "unpause") from exc
            return
        session = self._session(engine.url, base[1])
        # The SDK negotiated the version at connect; the same path it would call.
        path = f"{base[0]}/v{engine.client.api.api_version}/containers/{container_id}/unpause"
        try:
            async with session.post(path) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(
                f"Docker engine {engine.url} is unreachable (unpause): {exc!r}",
                reason="engine_unreachable",
            ) from exc
        if resp.status >= 300:
            raise StartError(f"unpause on {engine.url}: HTTP {resp.status}: {_message(body)}")

    def _session(self, url: str, socket_path: str | None) -> aiohttp.ClientSession:
        session = self._sessions.get(url)
        if session is None or session.closed:
            connector = (
                aiohttp.UnixConnector(path=socket_path)
                if socket_path is not None
                else aiohttp.TCPConnector()
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=ENGINE_CALL_TIMEOUT),
            )
            self._sessions[url] = session
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def _message(body: bytes) -> str:
    """The engine's error text ({"message": ...}), or the raw body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:200]
    return str(doc.get("message", doc)) if isinstance(doc, dict) else str(doc)
