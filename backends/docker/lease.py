"""Ownership on a Docker engine shared by replicas (blocking: call from a thread).

Lease: each run keeps one marker container per engine, created and never started
(label io.forkproxy.lease), and renames it on every heartbeat. Labels are immutable; the
name is the one field the engine lets us change cheaply (a rename is ≈ 4 ms) and lists
with the containers, so the name is the lease token.

Claim: adopting a stopped run's container first creates a claim marker named after the
container's id, labelled with the adopter as owner. The engine creates a name once (409
for everyone else), so exactly one replica adopts it and unpauses it; the container's own
labels still name the dead run, so owner_of() lets the claim marker's owner win. Whoever
removes an adopted container removes its claim marker too."""

from __future__ import annotations

import contextlib
import zlib
from typing import Any

import docker.errors

from forkproxy.backends.base import LABEL_MANAGED, LABEL_OWNER, LABEL_POOL
from forkproxy.backends.engine.client import Engine

LABEL_LEASE = "io.forkproxy.lease"  # "true" on lease markers
LABEL_CLAIMS = "io.forkproxy.claims"  # on claim markers: the adopted container's id


def _labels(row: dict[str, Any]) -> dict[str, str]:
    return row.get("Labels") or {}


def is_marker(row: dict[str, Any]) -> bool:
    """A lease or claim marker: never started, not an instance."""
    labels = _labels(row)
    return labels.get(LABEL_LEASE) == "true" or LABEL_CLAIMS in labels


def marker_meta(row: dict[str, Any]) -> dict[str, str]:
    """Instance.meta["marker"] of a listed marker: the pool reaps it, but it is no
    instance (not counted as a stop)."""
    labels = _labels(row)
    if labels.get(LABEL_LEASE) == "true":
        return {"marker": "lease"}
    return {"marker": "claim"} if LABEL_CLAIMS in labels else {}


def claims(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Adopted container id -> its adopter, from the claim markers among `rows`."""
    return {
        _labels(r)[LABEL_CLAIMS]: _labels(r).get(LABEL_OWNER, "")
        for r in rows
        if LABEL_CLAIMS in _labels(r)
    }


def owner_of(row: dict[str, Any], claimed: dict[str, str]) -> str:
    return claimed.get(row["Id"]) or _labels(row).get(LABEL_OWNER, "")


def claim_name(pool: str, cid: str) -> str:
    return f"forkproxy-{pool}-claim-{cid[:12]}"


def leases(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Owner id -> lease token (the marker's name) among a pool's container rows."""
    out: dict[str, str] = {}
    for row in rows:
        if _labels(row).get(LABEL_LEASE) == "true":
            name = (row.get("Names") or ["?"])[0].lstrip("/")
            out[_labels(row).get(LABEL_OWNER, "")] = name
    return out


class Marker:
    """This run's lease marker on one engine."""

    def __init__(self, engine: Engine, image: str, pool: str, owner: str) -> None:
        self.engine = engine
        self.image = image
        self.pool = pool
        self.owner = owner
        self.id: str | None = None
        self._beats = 0

    def _name(self) -> str:
        # unique per owner and engine URL (two URLs may reach one daemon), new every beat
        where = zlib.crc32(self.engine.url.encode())
        return f"forkproxy-{self.pool}-lease-{self.owner}-{where:08x}-{self._beats}"

    def beat(self) -> None:
        """Rename the marker (create it if it is missing: first beat, engine back)."""
        api = self.engine.client.api
        self._beats += 1
        if self.id is not None:
            try:
                api.rename(self.id, self._name())
                return
            except docker.errors.NotFound:
                self.id = None
        labels = {
            LABEL_MANAGED: "true",
            LABEL_POOL: self.pool,
            LABEL_OWNER: self.owner,
            LABEL_LEASE: "true",
        }
        created = api.create_container(self.image, name=self._name(), labels=labels)
        self.id = str(created["Id"])

    def remove(self) -> None:
        if self.id is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.engine.client.api.remove_container(self.id, force=True)
            self.id = None


def claim(engine: Engine, image: str, pool: str, cid: str, owner: str) -> bool:
    """Create the claim marker of container `cid` for `owner`; False if another has it."""
    labels = {LABEL_MANAGED: "true", LABEL_POOL: pool, LABEL_OWNER: owner, LABEL_CLAIMS: cid}
    try:
        engine.client.api.create_container(image, name=claim_name(pool, cid), labels=labels)
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            return False  # another replica claimed it first
        raise
    return True


def unclaim(engine: Engine, pool: str, cid: str) -> None:
    """Remove the claim marker of `cid`, if there is one."""
    with contextlib.suppress(docker.errors.NotFound):
        engine.client.api.remove_container(claim_name(pool, cid), force=True)
