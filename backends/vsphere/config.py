"""The `[backend]` table of `type = "vsphere"`: a frozen, validated VsphereConfig.
No pyVmomi here, so configs validate (check-config) without the SDK installed."""

from __future__ import annotations

import ipaddress
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.support.table import Table

DEFAULT_PASSWORD_ENV = "FORKPROXY_VSPHERE_PASSWORD"
TEMPLATE_FIELDS = ("instance_id", "hostname", "name", "index", "pool", "ip")


@dataclass(frozen=True)
class Placement:
    """Where clones go; None means "the parent's"."""

    resource_pool: str | None = None
    cluster: str | None = None
    host: str | None = None  # an ESXi host (name), not the vCenter
    datastore: str | None = None
    folder: str | None = None


@dataclass(frozen=True)
class ContainerSpec:
    """Start the app container on the clone's own Docker engine once it has an IP."""

    image: str
    command: tuple[str, ...] | None = None
    engine_url: str = "tcp://{ip}:2375"


@dataclass(frozen=True)
class VsphereConfig:
    host: str
    user: str
    parent_vm: str
    port: int = 443
    password_env: str | None = None  # None: DEFAULT_PASSWORD_ENV (unless password_file)
    password_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    datacenter: str | None = None  # None: the only datacenter
    placement: Placement = field(default_factory=Placement)
    name_prefix: str = "forkproxy-"
    mode: str = "instant"  # "instant" | "linked"
    snapshot: str | None = None  # linked mode
    app_port: int = 8080
    readiness_path: str | None = None  # None: the pool probes [pool].readiness_path
    guest_ip_timeout: float = 120.0
    clone_timeout: float = 300.0
    max_concurrent_clones: int = 4
    guestinfo: dict[str, str] = field(default_factory=dict)  # extra keys, templates
    ip_range: tuple[str, str] | None = None  # first, last (inclusive)
    container: ContainerSpec | None = None
    watch_deaths: bool = True

    def password(self) -> str:
        """Read the password now (never stored in the config, never logged)."""
        if self.password_file:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise BackendConfigError(
                    f"backend.password_file {self.password_file}: cannot read: {exc.strerror}"
                ) from exc
            return text.rstrip("\r\n")
        name = self.password_env or DEFAULT_PASSWORD_ENV
        value = os.environ.get(name)
        if not value:
            raise BackendConfigError(
                f"no vCenter password: set the environment variable {name} "
                "(backend.password_env) or backend.password_file"
            )
        return value

    def ip_pool(self) -> list[str]:
        if self.ip_range is None:
            return []
        first = ipaddress.ip_address(self.ip_range[0])
        last = ipaddress.ip_address(self.ip_range[1])
        return [str(ipaddress.ip_address(i)) for i in range(int(first), int(last) + 1)]


def _parse_ip_range(table: Table, value: str | None) -> tuple[str, str] | None:
    """ "10.0.0.10-10.0.0.50" or a CIDR "10.0.0.0/28" (its usable hosts)."""
    if value is None:
        return None
    try:
        if "/" in value:
            net = ipaddress.ip_network(value, strict=False)
            hosts = list(net.hosts()) or [net.network_address]
            return str(hosts[0]), str(hosts[-1])
        first_s, _, last_s = value.partition("-")
        first = ipaddress.ip_address(first_s.strip())
        last = ipaddress.ip_address((last_s or first_s).strip())
    except ValueError as exc:
        table.error("ip_range", f"{value!r}: {exc} (use 'A.B.C.D-A.B.C.E' or a CIDR)")
        return None
    if first.version != last.version or int(last) < int(first):
        table.error("ip_range", f"{value!r}: the last address must follow the first")
        return None
    if int(last) - int(first) > 65535:
        table.error("ip_range", f"{value!r}: more than 65536 addresses")
        return None
    return str(first), str(last)


def _check_template(table: Table, key: str, template: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        table.error(key, f"{template!r}: {exc}")
        return
    for name in names:
        if name not in TEMPLATE_FIELDS:
            table.error(key, f"unknown field {{{name}}} (allowed: {', '.join(TEMPLATE_FIELDS)})")


def _container(table: Table) -> ContainerSpec | None:
    if not table.has("container"):
        return None
    sub = table.sub("container")
    image = sub.str("image", required=True)
    command = tuple(sub.str_list("command")) if sub.has("command") else None
    engine_url = sub.str("engine_url", "tcp://{ip}:2375")
    if engine_url.replace("{ip}", "") and "{" in engine_url.replace("{ip}", ""):
        sub.error("engine_url", "only the {ip} placeholder is allowed")
    sub.done()
    return ContainerSpec(image=image, command=command, engine_url=engine_url)


def parse_config(table: Table) -> VsphereConfig:
    if table.has("password"):
        table.str("password")  # mark seen: the error below is the one to show
        table.error(
            "password",
            "a password must not be in the config file: put it in the environment variable "
            f"named by password_env (default {DEFAULT_PASSWORD_ENV}) or in password_file",
        )
    placement_t = table.sub("placement")
    placement = Placement(
        resource_pool=placement_t.opt_str("resource_pool"),
        cluster=placement_t.opt_str("cluster"),
        host=placement_t.opt_str("host"),
        datastore=placement_t.opt_str("datastore"),
        folder=placement_t.opt_str("folder"),
    )
    placement_t.done()
    if placement.resource_pool and placement.cluster:
        table.error("placement", "set resource_pool or cluster, not both")

    mode = table.choice("mode", ("instant", "linked"), "instant")
    snapshot = table.opt_str("snapshot")
    if mode == "linked" and not snapshot:
        table.error("snapshot", "required in linked mode (the parent's snapshot to clone from)")
    if mode == "instant" and snapshot:
        table.error("snapshot", 'only used with mode = "linked"')

    password_file = table.opt_str("password_file")
    password_env = table.opt_str("password_env")
    if password_file and password_env:
        table.error("password_file", "set password_env or password_file, not both")

    guestinfo = table.str_map("guestinfo")
    for key, template in guestinfo.items():
        if not key.replace(".", "").replace("_", "").replace("-", "").isalnum():
            table.error(f"guestinfo.{key}", "keys are letters, digits, '.', '_' and '-'")
        _check_template(table, f"guestinfo.{key}", template)

    readiness_path = table.opt_str("readiness_path")
    if readiness_path is not None and not readiness_path.startswith("/"):
        table.error("readiness_path", "must start with '/'")

    prefix = table.str("name_prefix", "forkproxy-")
    if not prefix:
        table.error("name_prefix", "must not be empty (it marks the clones this proxy may delete)")

    cfg = VsphereConfig(
        host=table.str("host", required=True),
        port=table.int("port", 443, min=1, max=65535),
        user=table.str("user", required=True),
        password_env=password_env,
        password_file=password_file,
        ca_file=table.opt_str("ca_file"),
        insecure=table.bool("insecure", False),
        datacenter=table.opt_str("datacenter"),
        parent_vm=table.str("parent_vm", required=True),
        placement=placement,
        name_prefix=prefix or "forkproxy-",
        mode=mode,
        snapshot=snapshot,
        app_port=table.int("app_port", 8080, min=1, max=65535),
        readiness_path=readiness_path,
        guest_ip_timeout=table.duration("guest_ip_timeout", 120.0, min=1.0),
        clone_timeout=table.duration("clone_timeout", 300.0, min=1.0),
        max_concurrent_clones=table.int("max_concurrent_clones", 4, min=1, max=64),
        guestinfo=guestinfo,
        ip_range=_parse_ip_range(table, table.opt_str("ip_range")),
        container=_container(table),
        watch_deaths=table.bool("watch_deaths", True),
    )
    if cfg.ca_file and cfg.insecure:
        table.error("insecure", "set ca_file or insecure = true, not both")
    table.done()
    return cfg
