"""A small internet with homes behind real NAT routers: Linux network namespaces.

The direct-connection tests and benchmarks need the NATs people have at home,
built on this machine only::

                          internet namespace (bridge br0, 203.0.113.1: the tracker)
              +-----------------+------------------+---------------------+
              |                 |                  |                     |
      open router (a switch)  cone router        symmetric router       ...
      host 203.0.113.N        wan 203.0.113.N    wan 203.0.113.N
      (public, no NAT)        MASQUERADE         MASQUERADE --random-fully
                              lan 192.168.K.1    lan 192.168.K.1
                                 |                  |
                              host 192.168.K.2   host 192.168.K.2

Every home is two namespaces, a router and a host behind it:

- ``open``: the router is a plain bridge; the host has a public address on
  the internet segment and no filter, like a server with a public IP.
- ``cone``: the router masquerades the home's private network behind its one
  public address (``iptables -t nat -A POSTROUTING -o wan -j MASQUERADE``,
  which keeps a connection's source port when it is free), forwards inbound
  packets only for connections the home started (``ESTABLISHED,RELATED``)
  and drops everything else, and, like a home router, answers nothing
  unsolicited on its WAN side (no RST, no ICMP: the same filter on INPUT).
  Two such NATs let a TCP simultaneous open through when both sides dial each
  other's public address from the port they reflected.
- ``symmetric``: the same with ``MASQUERADE --random-fully``: each new
  connection gets a random public port, so the port another host learned is
  never the one a new dial leaves from, and hole punching fails.

The internet namespace does not forward and has no route to any private
network: a home host is reached from outside only through its router's NAT.
Addresses are documentation (RFC 5737) and private ranges that exist only in
these namespaces; names carry a random suffix so parallel runs never collide,
and everything is removed on exit (deleting a namespace deletes its links).

``conntrack_mappings`` reads a router's NAT table (``conntrack -L``) for
diagnostics: which private address and port left by which public one.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

from tests.netns import netns_unavailable_reason

Kind = Literal["open", "cone", "symmetric"]
KINDS: Final[tuple[Kind, ...]] = ("open", "cone", "symmetric")

INTERNET_PREFIX: Final = "203.0.113"
#: the internet namespace's own address: where the tracker listens
TRACKER_ADDR: Final = f"{INTERNET_PREFIX}.1"
TOOLS: Final = ("ip", "iptables", "conntrack")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def in_ci() -> bool:
    """``FLASHBACK_NO_SKIP=1`` (set by .ci/run) or ``CI=true`` (set by CI services)."""
    return os.environ.get("FLASHBACK_NO_SKIP") == "1" or _truthy(os.environ.get("CI"))


def nat_lab_unavailable_reason() -> str | None:
    """Why the lab cannot be built here, or None when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (make system-deps installs them)"
    reason = netns_unavailable_reason()
    if reason is not None:
        return reason
    probe = f"fbprobe-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=True)
    try:
        nat = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-A", "POSTROUTING",
             "-o", "lo", "-j", "MASQUERADE", "--random-fully"],
            capture_output=True, check=False,
        )  # fmt: skip
        if nat.returncode != 0:
            return f"iptables cannot masquerade in a namespace: {nat.stderr.decode().strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def require_nat_lab() -> None:
    """In a test: go on when the lab can be built; else fail under CI, skip elsewhere.

    CI runs as root with ``make system-deps`` done, so a missing tool there is
    a broken setup that must show, never a quietly skipped test (the same
    rule tests/conftest.py applies to every skip under FLASHBACK_NO_SKIP=1).
    """
    import pytest  # only tests call this; the benches use nat_lab_unavailable_reason

    reason = nat_lab_unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"the NAT lab cannot be built in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def exec_prefix(namespace: str) -> list[str]:
    """Put this in front of a command to run it inside *namespace*."""
    return ["ip", "netns", "exec", namespace]


def run_in(namespace: str, *argv: str, timeout_s: float = 20) -> str:
    """Run *argv* inside *namespace*; its stdout (raises on a non-zero exit)."""
    done = subprocess.run(
        [*exec_prefix(namespace), *argv], capture_output=True, check=False, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} in {namespace} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout.decode()


@dataclass(frozen=True)
class Home:
    label: str  # e.g. "cone1"
    kind: Kind
    router: str  # namespace names
    host: str
    public_addr: str  # what the internet sees: the router's WAN address, or the open host's
    host_addr: str  # the host's own address (private behind a NAT)
    lan_prefix: str  # e.g. "192.168.2" (empty for an open home)

    @property
    def prefix(self) -> list[str]:
        """``ip netns exec <host>``: run a process on this home's host."""
        return exec_prefix(self.host)


@dataclass(frozen=True)
class NatLab:
    internet: str
    homes: dict[str, Home]
    tracker_addr: str = TRACKER_ADDR

    @property
    def internet_prefix(self) -> list[str]:
        return exec_prefix(self.internet)

    def __getitem__(self, label: str) -> Home:
        return self.homes[label]

    def describe(self) -> str:
        """Every router's addresses and NAT table, for a failing test's message."""
        lines = [f"internet {self.internet} ({self.tracker_addr})"]
        for home in self.homes.values():
            lines.append(
                f"{home.label} ({home.kind}): host {home.host_addr} public {home.public_addr}"
            )
            if home.kind != "open":
                lines.extend("  " + str(m) for m in conntrack_mappings(home.router))
        return "\n".join(lines)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.decode().strip()}")


def _sysctl(namespace: str, key: str, value: str) -> None:
    # written through /proc, so procps need not be installed
    path = "/proc/sys/" + key.replace(".", "/")
    run_in(namespace, "sh", "-c", f"echo {value} > {path}")


def _iptables(namespace: str, *rule: str) -> None:
    run_in(namespace, "iptables", "-w", *rule)


def router_rules(kind: Kind) -> list[list[str]]:
    """The iptables rules of a NAT router (``wan`` faces the internet)."""
    masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
    if kind == "symmetric":
        masquerade.append("--random-fully")
    rules = [masquerade]
    for chain in ("FORWARD", "INPUT"):
        rules.append(["-A", chain, "-i", "wan", "-m", "conntrack", "--ctstate",
                      "ESTABLISHED,RELATED", "-j", "ACCEPT"])  # fmt: skip
        rules.append(["-A", chain, "-i", "wan", "-j", "DROP"])
    return rules


def _build_home(lab_tag: str, internet: str, index: int, label: str, kind: Kind) -> Home:
    public = f"{INTERNET_PREFIX}.{10 + index}"
    lan = f"192.168.{index + 1}"
    home = Home(
        label=label,
        kind=kind,
        router=f"fb-{lab_tag}-{label}-r",
        host=f"fb-{lab_tag}-{label}-h",
        public_addr=public,
        host_addr=public if kind == "open" else f"{lan}.2",
        lan_prefix="" if kind == "open" else lan,
    )
    for ns in (home.router, home.host):
        _ip("-n", ns, "link", "set", "lo", "up")
    # links are made inside the router, so nothing ever appears in the host's namespace
    uplink = f"up{index}"
    _ip("-n", home.router, "link", "add", "wan", "type", "veth", "peer", "name", uplink)
    _ip("-n", home.router, "link", "set", uplink, "netns", internet)
    _ip("-n", internet, "link", "set", uplink, "master", "br0")
    _ip("-n", internet, "link", "set", uplink, "up")
    _ip("-n", home.router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0")
    _ip("-n", home.router, "link", "set", "eth0", "netns", home.host)
    if kind == "open":
        # the router is a switch: the host sits on the internet segment itself
        _ip("-n", home.router, "link", "add", "br0", "type", "bridge")
        for port in ("wan", "lan"):
            _ip("-n", home.router, "link", "set", port, "master", "br0")
        _ip("-n", home.router, "link", "set", "br0", "up")
        _ip("-n", home.host, "addr", "add", f"{public}/24", "dev", "eth0")
    else:
        _ip("-n", home.router, "addr", "add", f"{public}/24", "dev", "wan")
        _ip("-n", home.router, "addr", "add", f"{lan}.1/24", "dev", "lan")
        _ip("-n", home.host, "addr", "add", f"{lan}.2/24", "dev", "eth0")
    for port in ("wan", "lan"):
        _ip("-n", home.router, "link", "set", port, "up")
    _ip("-n", home.host, "link", "set", "eth0", "up")
    if kind != "open":
        _ip("-n", home.host, "route", "add", "default", "via", f"{lan}.1")
        _sysctl(home.router, "net.ipv4.ip_forward", "1")
        for rule in router_rules(kind):
            _iptables(home.router, *rule)
    return home


@contextmanager
def nat_lab(homes: Mapping[str, Kind]) -> Iterator[NatLab]:
    """Build the internet and one home per ``label: kind``; remove everything on exit.

    >>> with nat_lab({"alice": "cone", "bob": "symmetric"}) as lab:
    ...     lab["alice"].prefix  # ["ip", "netns", "exec", "fb-...-alice-h"]
    """
    for label, kind in homes.items():
        if kind not in KINDS:
            raise ValueError(f"home {label!r}: kind {kind!r} is not one of {KINDS}")
        if not re.fullmatch(r"[a-z0-9]{1,12}", label):
            raise ValueError(f"home label {label!r}: 1-12 lowercase letters or digits")
    tag = secrets.token_hex(3)
    internet = f"fb-{tag}-inet"
    made: list[str] = []
    try:
        namespaces = [internet]
        for label in homes:
            namespaces += [f"fb-{tag}-{label}-r", f"fb-{tag}-{label}-h"]
        for ns in namespaces:
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", internet, "link", "set", "lo", "up")
        _ip("-n", internet, "link", "add", "br0", "type", "bridge")
        _ip("-n", internet, "addr", "add", f"{TRACKER_ADDR}/24", "dev", "br0")
        _ip("-n", internet, "link", "set", "br0", "up")
        _sysctl(internet, "net.ipv4.ip_forward", "0")
        built = {
            label: _build_home(tag, internet, index, label, kind)
            for index, (label, kind) in enumerate(homes.items())
        }
        yield NatLab(internet=internet, homes=built)
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@dataclass(frozen=True)
class NatMapping:
    """One NAT mapping in a router: *private* left for *remote* as *public*."""

    protocol: str
    state: str  # e.g. "ESTABLISHED", "SYN_SENT", "" for udp
    private: tuple[str, int]
    remote: tuple[str, int]
    public: tuple[str, int]
    replied: bool

    def __str__(self) -> str:
        p, r, q = self.private, self.remote, self.public
        seen = "" if self.replied else " [unreplied]"
        return f"{self.protocol} {self.state} {p[0]}:{p[1]} -> {q[0]}:{q[1]} -> {r[0]}:{r[1]}{seen}"


_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


def parse_conntrack(text: str) -> list[NatMapping]:
    """Lines of ``conntrack -L`` (the default format), TCP and UDP entries only."""
    mappings = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] not in ("tcp", "udp"):
            continue
        state = words[3] if words[0] == "tcp" and "=" not in words[3] else ""
        fields = _FIELD.findall(line)
        if len(fields) < 8:
            continue
        orig = dict(fields[:4])
        reply = dict(fields[4:8])
        mappings.append(
            NatMapping(
                protocol=words[0],
                state=state,
                private=(orig["src"], int(orig["sport"])),
                remote=(orig["dst"], int(orig["dport"])),
                # the reply goes to where the remote thinks the connection came from
                public=(reply["dst"], int(reply["dport"])),
                replied="[UNREPLIED]" not in line,
            )
        )
    return mappings


def conntrack_mappings(router: str, protocol: str = "tcp") -> list[NatMapping]:
    """The router's current connection-tracking entries (its NAT table)."""
    done = subprocess.run(
        [*exec_prefix(router), "conntrack", "-L", "-p", protocol],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return parse_conntrack(done.stdout.decode())


def mappings_from(router: str, private_port: int) -> list[NatMapping]:
    """The router's mappings of connections a home host started from *private_port*."""
    return [m for m in conntrack_mappings(router) if m.private[1] == private_port]


def pair_labels(pairs: Sequence[tuple[Kind, Kind]]) -> dict[str, Kind]:
    """Enough homes for every (alice, bob) pair: ``cone1``, ``cone2``, ``open1``...

    A pair of the same kind needs two homes of that kind; each kind gets as
    many homes as the most any one pair needs.
    """
    need: dict[Kind, int] = {}
    for pair in pairs:
        for kind in pair:
            need[kind] = max(need.get(kind, 0), pair.count(kind))
    return {f"{kind}{n}": kind for kind, count in need.items() for n in range(1, count + 1)}


def pair_homes(lab: NatLab, pair: tuple[Kind, Kind]) -> tuple[Home, Home]:
    """The two homes of *pair* in a lab built by ``nat_lab(pair_labels(...))``."""
    first = lab[f"{pair[0]}1"]
    second = lab[f"{pair[1]}2" if pair[1] == pair[0] else f"{pair[1]}1"]
    return first, second
