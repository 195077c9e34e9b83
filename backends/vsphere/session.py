"""One shared vCenter session for the vsphere backend: login, TLS, and a transparent
re-login when vCenter says NotAuthenticated. Every call runs in a thread (asyncio.to_thread)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from forkproxy.backends.errors import BackendConfigError, BackendUnavailable
from forkproxy.backends.vsphere.config import VsphereConfig
from forkproxy.backends.vsphere.sdk import SmartStubAdapter, vim

log = logging.getLogger("forkproxy.backend.vsphere")
T = TypeVar("T")

# Socket timeout of the SOAP connection; WaitForUpdatesEx rounds stay well below it.
HTTP_TIMEOUT = 60.0


def ssl_context(cfg: VsphereConfig) -> ssl.SSLContext:
    if cfg.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise BackendConfigError(f"backend.ca_file {cfg.ca_file}: {exc}") from exc


class Session:
    """The ServiceInstance plus the re-login logic. Thread-safe: pyVmomi's stub pools
    connections, and a re-login (Login on the same stub, so every managed object
    reference we hold stays bound to a live cookie) is serialized by a lock."""

    def __init__(self, cfg: VsphereConfig) -> None:
        self.cfg = cfg
        self.si: Any = None
        self.content: Any = None  # ServiceContent, fetched once: what call() hands out
        self._lock = threading.Lock()
        self._generation = 0  # bumps on every (re)login
        self._logged_in = False
        self.relogins = 0

    def __repr__(self) -> str:
        state = "logged in" if self._logged_in else "logged out"
        return f"<vsphere Session {self.cfg.user}@{self.cfg.host}:{self.cfg.port} {state}>"

    def connect(self) -> None:
        """Log in (blocking). Bad credentials → BackendConfigError; unreachable →
        BackendUnavailable. Logging in again after close() reuses the stub, so managed
        object references taken earlier (the parent, clones) keep working."""
        password = self.cfg.password()
        with self._lock:
            if self._logged_in:
                return
            if self.si is not None:
                try:
                    self.content.sessionManager.Login(userName=self.cfg.user, password=password)
                except BaseException as exc:
                    raise self._translate(exc) from exc
                self._logged_in = True
                self._generation += 1
                return
        if self.cfg.insecure:
            log.warning(
                "vsphere: insecure = true: the vCenter TLS certificate of %s is NOT verified",
                self.cfg.host,
            )
        # SmartConnect's steps by hand, so a failed login closes its connections.
        context = ssl_context(self.cfg)
        stub = None
        try:
            stub = SmartStubAdapter(
                host=self.cfg.host,
                port=self.cfg.port,
                sslContext=context,
                httpConnectionTimeout=HTTP_TIMEOUT,
            )
            si = vim.ServiceInstance("ServiceInstance", stub)
            content = si.RetrieveContent()
            content.sessionManager.Login(userName=self.cfg.user, password=password)
        except BaseException as exc:
            if stub is not None:
                stub.DropConnections()
            raise self._translate(exc) from exc
        with self._lock:
            self.si, self.content = si, content
            self._logged_in = True
            self._generation += 1
        log.info("vsphere: logged in to %s as %s", self.cfg.host, self.cfg.user)

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, vim.fault.InvalidLogin):
            return BackendConfigError(
                f"vCenter rejected the credentials for user {self.cfg.user} "
                f"at {self.cfg.host}:{self.cfg.port}",
                reason="not_authenticated",
            )
        if isinstance(exc, ssl.SSLError):
            return BackendConfigError(
                f"TLS to vCenter {self.cfg.host}:{self.cfg.port} failed: {exc.reason or exc} "
                "(set backend.ca_file to the vCenter CA, or insecure = true to skip checks)"
            )
        if isinstance(exc, OSError | vim.fault.HostConnectFault):
            return BackendUnavailable(
                f"vCenter {self.cfg.host}:{self.cfg.port} is unreachable: {exc}",
                reason="vcenter_unreachable",
            )
        return exc

    def _relogin(self, seen_generation: int) -> None:
        with self._lock:
            if self._generation != seen_generation:
                return  # another thread already logged in again
            log.warning("vsphere: session expired (NotAuthenticated); logging in again")
            try:
                self.content.sessionManager.Login(
                    userName=self.cfg.user, password=self.cfg.password()
                )
            except vim.fault.InvalidLogin as exc:
                raise BackendConfigError(
                    f"vCenter rejected the credentials for user {self.cfg.user} on re-login",
                    reason="not_authenticated",
                ) from exc
            self._generation += 1
            self.relogins += 1

    def call(self, fn: Callable[[Any], T]) -> T:
        """fn(service_content) in this thread; on NotAuthenticated log in again once and
        retry. fn must be safe to repeat (it failed at its first vCenter call)."""
        if not self._logged_in:
            self.connect()
        generation = self._generation
        try:
            return fn(self.content)
        except vim.fault.NotAuthenticated:
            self._relogin(generation)
        return fn(self.content)

    async def run(self, fn: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(self.call, fn)

    def close(self) -> None:
        """Log out and close the connections; a later call logs in again on the same stub."""
        with self._lock:
            si, was_in = self.si, self._logged_in
            self._logged_in = False
        if si is None:
            return
        if was_in:
            try:
                self.content.sessionManager.Logout()
            except Exception as exc:  # logout of a dead session: nothing left to release
                log.debug("vsphere: logout failed: %s", exc)
        si._stub.DropConnections()
