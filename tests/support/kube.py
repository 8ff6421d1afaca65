"""The local Kubernetes of ``kube/cluster.sh`` for tests: its commands, and what it may leave on the host.

``HostState.now()`` records everything a cluster puts on this machine that must be gone after ``make
kube-down``: its processes (by binary, by our folder in the command line, by the pod cgroups), mounts,
the bridge and the pods' network namespaces (veth pairs included), iptables chains and rules of both
families, pod cgroups, the host folders kubelet and libcni use, and the sysctls kubelet, kube-proxy and the bridge plugin change. Only what is
the cluster's is recorded (other work on the machine may add podman networks meanwhile).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "kube" / "cluster.sh"
KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.37.2")
COREDNS_VERSION = os.environ.get("COREDNS_VERSION", "v1.14.7")
KUBE_DIR = Path(
    os.environ.get("WAITROOM_KUBE_DIR")
    or Path(os.environ.get("WAITROOM_CACHE_DIR") or Path.home() / ".cache" / "waitroom") / "kube"
)
BIN = KUBE_DIR / f"bin-{KUBE_VERSION}"
KUBECONFIG = KUBE_DIR / "state" / "admin.kubeconfig"
BRIDGE = "wrkube0"
#: the sysctls kube/cluster.sh records and puts back (its SYSCTLS)
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
)
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-")
#: step -> wall time in seconds, of this session's layer (printed at the end by tests/kube/conftest.py)
TIMINGS: dict[str, float] = {}


def binaries_missing() -> list[str]:
    wanted = [BIN / name for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")]
    wanted += [BIN / "kube-proxy", BIN / "kubectl", KUBE_DIR / f"coredns-{COREDNS_VERSION}" / "coredns"]
    return [str(path) for path in wanted if not os.access(path, os.X_OK)]


def cluster_sh(command: str, timeout_s: float = 600) -> float:
    """Runs ``kube/cluster.sh <command>``; its wall time in seconds (its output is shown when it fails)."""
    started = time.monotonic()
    result = subprocess.run([str(CLUSTER_SH), command], capture_output=True, text=True, timeout=timeout_s, check=False)
    assert result.returncode == 0, f"kube/cluster.sh {command} failed:\n{result.stdout}{result.stderr}"
    return time.monotonic() - started


@dataclass
class Kube:
    """kubectl and helm against the local cluster, in one namespace."""

    namespace: str
    env: dict[str, str] = field(default_factory=lambda: {**os.environ, "KUBECONFIG": str(KUBECONFIG)})

    def run(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout_s)
        if check:
            assert result.returncode == 0, (
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def kubectl(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "kubectl"), "-n", self.namespace, *args, timeout_s=timeout_s, check=check)

    def helm(self, *args: str, timeout_s: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", "--namespace", self.namespace, *args, timeout_s=timeout_s, check=check)

    def get(self, *what: str) -> Any:
        return json.loads(self.kubectl("get", *what, "-o", "json").stdout)


@dataclass
class ClusterRun:
    """The layer's cluster: the host as it was before it started, and the steps' wall times."""

    before: HostState
    timings: dict[str, float] = field(default_factory=lambda: TIMINGS)


# --- what the cluster leaves on the host ----------------------------------------------------------


def _ours_in_cmdline(pid: str) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    kube_dir = str(KUBE_DIR).encode()
    return any(arg.startswith(kube_dir) for arg in args)


def _processes() -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        try:
            exe = os.readlink(entry / "exe")
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if exe.startswith(str(KUBE_DIR)) or ":/kubepods" in cgroups or _ours_in_cmdline(entry.name):
            found.add(f"{entry.name} {exe}")
    return found


def _mounts() -> set[str]:
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(str(KUBE_DIR)) or "/netns/cni-" in point or "kubelet" in point:
            found.add(point)
    return found


def _links() -> set[str]:
    """The bridge, and every link whose peer is in a pod's network namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name == BRIDGE or f"master {BRIDGE}" in line or "link-netns cni-" in line:
            found.add(name)
    netns = Path("/run/netns")
    if netns.is_dir():
        found |= {f"netns {p.name}" for p in netns.iterdir() if p.name.startswith("cni-")}
    return found


def _iptables() -> set[str]:
    found = set()
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            result = subprocess.run([command, "-t", table, "-S"], capture_output=True, text=True)
            for line in result.stdout.splitlines():
                if any(prefix in line for prefix in OUR_CHAIN_PREFIXES) or "waitroom-kube" in line:
                    found.add(f"{command} -t {table} {line}")
    return found


def _cgroups() -> set[str]:
    return {str(path) for path in Path("/sys/fs/cgroup").glob("*/kubepods")} | {
        str(path) for path in Path("/sys/fs/cgroup").glob("kubepods")
    }


def _host_paths() -> set[str]:
    """Folders the kubelet and libcni use wherever they are told (kube/cluster.sh HOST_PATHS), and what is in them."""
    found = set()
    for top in map(Path, ("/var/lib/kubelet", "/var/log/containers", "/var/lib/cni", "/var/log/pods")):
        if top.exists():
            found.add(str(top))
            found |= {str(path) for path in top.rglob("*")}
    return found


def _sysctls() -> set[str]:
    found = set()
    for key in SYSCTLS:
        path = Path("/proc/sys") / key.replace(".", "/")
        if path.exists():
            found.add(f"{key}={path.read_text().strip()}")
    return found


@dataclass(frozen=True)
class HostState:
    processes: frozenset[str]
    mounts: frozenset[str]
    links: frozenset[str]
    iptables: frozenset[str]
    cgroups: frozenset[str]
    paths: frozenset[str]
    sysctls: frozenset[str]

    @classmethod
    def now(cls) -> HostState:
        return cls(
            frozenset(_processes()),
            frozenset(_mounts()),
            frozenset(_links()),
            frozenset(_iptables()),
            frozenset(_cgroups()),
            frozenset(_host_paths()),
            frozenset(_sysctls()),
        )

    def differences(self, other: HostState) -> dict[str, dict[str, list[str]]]:
        """Per kind: what ``other`` has that this has not ("added") and the other way round ("gone")."""
        diff = {}
        for kind in ("processes", "mounts", "links", "iptables", "cgroups", "paths", "sysctls"):
            mine, theirs = getattr(self, kind), getattr(other, kind)
            if mine != theirs:
                diff[kind] = {"added": sorted(theirs - mine), "gone": sorted(mine - theirs)}
        return diff
