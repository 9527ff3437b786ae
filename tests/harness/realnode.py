"""A real node for the end-to-end tests: kubelet and containerd with runc, on this machine, as root.

What runs, and why each setting (these machines are VMs with cgroup v1 controllers and a cgroup2 hierarchy
holding only hugetlb beside them, no container engine, and no registry to pull from):

- containerd (Debian's) with its CRI plugin, the overlayfs snapshotter and runc (Debian's; crun refuses
  "cgroups in hybrid mode"), cgroupfs not systemd (no systemd here), every state directory under a
  throwaway root. `restrict_oom_score_adj`: the VM lacks CAP_SYS_RESOURCE, and runc fails with "can't get
  final child's PID from pipe: EOF" when asked to lower a score.
- kubelet (built from the Go module proxy, the API server's version) on the same runtime socket, registered
  with the test API server. Kubernetes 1.34's kubelet still runs on cgroup v1 (`failCgroupV1: false` says
  so; it logs a deprecation warning). It sets host sysctls (vm.overcommit_memory, kernel.panic,
  kernel.panic_on_oops, kernel.keys.*) and the bridge plugin turns on ip_forward: all restored on stop.
- Both in one new mount namespace whose mounts are shared (`unshare --mount --propagation shared`): the
  host's root mount is private, the kubelet's volume mounts must reach runc, and every mount the node makes
  (overlays, tokens, network namespaces) disappears with the namespace instead of leaking onto the host.
- Pods get a bridge network from Debian's CNI plugins: bridge `cellar0` at 10.88.0.1/16. The servers stay on
  127.0.0.1; toxiproxy listens on the bridge address and forwards to them (`forward`), so a Pod reaches
  PostgreSQL and MinIO at 10.88.0.1, and the API server at 10.0.0.1:443, the `kubernetes` Service's
  ClusterIP that the kubelet puts in KUBERNETES_SERVICE_HOST (no kube-proxy here: the bridge simply holds
  that address too, so the Pod's packets for it arrive on this host).
- Nothing is pulled: cellar's images and the pause image are imported from an OCI archive
  (tests/harness/image.py) and pinned, so image garbage collection never removes them; eviction thresholds
  are set low so a nearly full disk of a shared machine does not evict the test's Pods.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import yaml

from tests.harness.faults import Toxiproxy
from tests.harness.image import IMAGE_REGISTRY, PAUSE_IMAGE
from tests.harness.stack import LocalStack, Process, StackError, built_binaries, free_port, log, spawn, wait_for

BRIDGE = "cellar0"
BRIDGE_ADDRESS = "10.88.0.1"
POD_SUBNET = "10.88.0.0/16"
SERVICE_ADDRESS = "10.0.0.1"  # the first address of the API server's --service-cluster-ip-range
NODE_NAME = "cellar-node"
# What ran on the node, printed at the end of the test run (conftest.py): evidence, not logs.
REPORT: list[str] = []
# What the kubelet and the bridge plugin write on the host, put back as found when the node stops.
HOST_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
)
DEBIAN_TOOLS = {"containerd": "containerd", "ctr": "containerd", "runc": "runc", "unshare": "util-linux"}
CNI_BIN = Path("/usr/lib/cni")
KUBELET_FIXED_DIR = Path("/var/lib/kubelet")
LOCK = Path("/tmp/cellar-real-node.lock")


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")
    return result


class RealNode:
    """containerd + runc + kubelet, registered with `stack`'s API server as node `cellar-node`."""

    def __init__(self, stack: LocalStack, images: Path) -> None:
        self.stack = stack
        self.images = images
        self.root = Path(tempfile.mkdtemp(prefix="cellar-node-", dir="/tmp"))
        self.socket = self.root / "containerd.sock"
        self.proxy = Toxiproxy()
        self.sysctls: dict[str, str] = {}
        self.containerd: Process | None = None
        self.kubelet: Process | None = None
        self.forwarded: dict[int, int] = {}
        # The kubelet's device manager uses /var/lib/kubelet/device-plugins whatever --root-dir says.
        self.made_var_lib_kubelet = not KUBELET_FIXED_DIR.exists()
        self.lock: IO[str] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> RealNode:
        self._check_host()
        # One node per machine at a time (the bridge, 10.0.0.1:443): a second test run waits for the first.
        self.lock = LOCK.open("w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            self.sysctls = {name: Path("/proc/sys", name).read_text().strip() for name in HOST_SYSCTLS}
            self._network()
            self.proxy.start()
            api_port = int(self.stack.kube_url.rsplit(":", 1)[1])
            self.proxy.proxy("kube-apiserver", f"127.0.0.1:{api_port}", host=SERVICE_ADDRESS, port=443)
            self._start_containerd()
            self._import_images()
            self._start_kubelet()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in (self.kubelet, self.containerd):
            if process is not None:
                process.stop()
        # The runtime's shims outlive containerd by design; ours name our socket on their command line.
        subprocess.run(["pkill", "-KILL", "-f", str(self.socket)], check=False)
        self.proxy.stop()
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for name, value in self.sysctls.items():
            try:
                Path("/proc/sys", name).write_text(value)
            except OSError as exc:
                log(f"could not restore {name}={value}: {exc}")
        for controller in Path("/sys/fs/cgroup").iterdir():  # the kubelet's empty QoS cgroups
            for cgroup in sorted(controller.glob("kubepods*/**/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.made_var_lib_kubelet:
            shutil.rmtree(KUBELET_FIXED_DIR, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()  # releases the flock

    def forward(self, port: int) -> tuple[str, int]:
        """Make 127.0.0.1:`port` reachable from Pods; the address they use."""
        if port not in self.forwarded:
            self.forwarded[port] = self.proxy.proxy(f"pods-to-{port}", f"127.0.0.1:{port}", host=BRIDGE_ADDRESS)
        return BRIDGE_ADDRESS, self.forwarded[port]

    # ---- parts -------------------------------------------------------------------------------------------
    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise StackError("a real node needs root (containerd, runc, mounts, a bridge)")
        missing = [
            f"{tool} (Debian package {package})" for tool, package in DEBIAN_TOOLS.items() if not shutil.which(tool)
        ]
        if not (CNI_BIN / "bridge").exists():
            missing.append(f"{CNI_BIN}/bridge (Debian package containernetworking-plugins)")
        if missing:
            raise StackError(f"missing for the real node: {', '.join(missing)}; tests/harness/setup.sh installs them")

    def _network(self) -> None:
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)  # a crashed run's
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/16", "dev", BRIDGE])
        _run(["ip", "addr", "add", f"{SERVICE_ADDRESS}/32", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        cni = self.root / "cni"
        cni.mkdir()
        (cni / "10-cellar.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "cellar-e2e",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_ADDRESS}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.root / "cni-ipam"),
                            },
                        }
                    ],
                }
            )
        )

    def _start_containerd(self) -> None:
        config = self.root / "containerd.toml"
        root = self.root
        config.write_text(
            f"""version = 2
root = "{root}/containerd"
state = "{root}/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        SystemdCgroup = false
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{root}/cni"
"""
        )
        self.containerd = spawn(
            "containerd",
            ["unshare", "--mount", "--propagation", "shared", "--", "containerd", "--config", str(config)],
            self.root,
        )
        wait_for("containerd", lambda: self._ctr("version", check=False).returncode == 0, self.containerd, 60)
        log(f"containerd ready at {self.socket}")

    def _ctr(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *argv]
        return _run(command) if check else subprocess.run(command, capture_output=True, text=True, check=False)

    def _import_images(self) -> None:
        started = time.monotonic()
        self._ctr("images", "import", "--all-platforms", str(self.images))
        listed = self._ctr("images", "list", "--quiet").stdout.split()
        names = [name for name in listed if name.startswith(IMAGE_REGISTRY)]
        for name in names:
            self._ctr("images", "label", name, "io.cri-containerd.pinned=pinned")
        log(f"images imported into containerd in {time.monotonic() - started:.0f} s: {', '.join(names)}")

    def _start_kubelet(self) -> None:
        port, healthz = free_port(), free_port()
        config = self.root / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": BRIDGE_ADDRESS,  # the API server reaches it for logs, as on any node
                    "port": port,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": healthz,
                    "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                    "authorization": {"mode": "AlwaysAllow"},
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "makeIPTablesUtilChains": False,  # no kube-proxy here; leave the host's iptables alone
                    "podLogsDir": str(self.root / "pod-logs"),
                    "resolvConf": "/etc/resolv.conf",
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "10Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "evictionPressureTransitionPeriod": "5s",
                    "registerNode": True,
                    "serializeImagePulls": False,
                    "syncFrequency": "5s",
                    "fileCheckFrequency": "5s",
                }
            )
        )
        kubelet = built_binaries(["kubelet"])["kubelet"]
        assert self.containerd is not None
        self.kubelet = spawn(
            "kubelet",
            [
                "nsenter",
                f"--mount=/proc/{self.containerd.popen.pid}/ns/mnt",
                "--",
                str(kubelet),
                f"--config={config}",
                f"--kubeconfig={self.stack.kubeconfig}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--cert-dir={self.root / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={BRIDGE_ADDRESS}",
                "--v=1",
            ],
            self.root,
        )
        from kubernetes import client

        from tests.harness.cluster import admin_client

        core = client.CoreV1Api(admin_client(self.stack.kubeconfig))

        def ready() -> bool:
            """True once Ready and untainted; otherwise raises what it is waiting for (wait_for reports it)."""
            try:
                node = core.read_node(NODE_NAME)
            except client.ApiException as exc:
                raise StackError(f"not registered ({exc.status})") from None
            condition = {c.type: c for c in node.status.conditions or []}.get("Ready")
            taints = [taint.key for taint in node.spec.taints or []]
            if condition is not None and condition.status == "True" and not taints:
                return True
            state = f"{condition.reason}: {condition.message}" if condition else "no Ready condition"
            raise StackError(state + (f"; taints {taints}" if taints else ""))

        wait_for(f"node {NODE_NAME} Ready", ready, self.kubelet, 120)
        node = core.read_node(NODE_NAME)
        info = node.status.node_info
        ready_line = f"node {NODE_NAME} Ready: kubelet {info.kubelet_version}, {info.container_runtime_version}"
        ready_line += f", {info.kernel_version}, cgroup v1 (hybrid), runc {self._runc_version()}"
        log(ready_line)
        REPORT.append(ready_line)

    def _runc_version(self) -> str:
        first = _run(["runc", "--version"]).stdout.splitlines()[0]
        return first.rsplit(" ", 1)[-1]
