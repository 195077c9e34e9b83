"""The swarm's nodes as the swarm backend needs them: the address a node's host-mode ports
are reached on, and the node's own engine where the proxy can reach it (the manager's node,
and any in `node_engines`) — needed only to pause and unpause parked spares."""

from __future__ import annotations

import logging

from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.errors import BackendError
from forkproxy.backends.swarm import services

log = logging.getLogger("forkproxy.backend.swarm")


class Nodes:
    def __init__(
        self, manager: Engine, threads: Threads, node_engines: dict[str, str], retry: float
    ) -> None:
        self._manager = manager
        self._threads = threads
        self._urls = node_engines  # node hostname or id -> engine URL
        self._retry = retry
        self.manager_node = ""  # the manager engine's own node id (prepare sets it)
        self._seen: dict[str, tuple[str, str]] = {}  # node id -> (address, hostname)
        self._engines: dict[str, Engine] = {}  # engine URL -> connected engine
        self._unreachable: set[str] = set()  # node ids already logged

    async def _node(self, node_id: str) -> tuple[str, str]:
        if node_id not in self._seen:
            self._seen[node_id] = await self._threads.call(
                services.node_address, self._manager, node_id
            )
        return self._seen[node_id]

    async def address(self, node_id: str) -> str:
        return (await self._node(node_id))[0]

    async def engine(self, node_id: str) -> Engine | None:
        """The node's engine, or None when the proxy has no way to it."""
        if node_id == self.manager_node:
            return self._manager
        hostname = (await self._node(node_id))[1]
        url = self._urls.get(node_id) or self._urls.get(hostname)
        if url is None:
            if node_id not in self._unreachable:
                self._unreachable.add(node_id)
                log.info(
                    "node %s (%s) has no entry in node_engines: its spares run unpaused",
                    hostname,
                    node_id[:12],
                )
            return None
        engine = self._engines.get(url)
        if engine is None:
            engine = self._engines[url] = Engine(url, self._retry)
        if not engine.healthy:
            try:
                await self._threads.call(engine.connect)
            except BackendError as exc:
                log.warning("node %s engine %s: %s (its spares run unpaused)", hostname, url, exc)
                return None
        return engine

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
