"""Brings up the whole system on one machine for cluster_suite.py: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on 127.0.0.1, containerd 1.7 with CRI (runtime
handler `kybernate` = our shim, runc), a real kubelet (node kyb-gpu-node), the images built here
without a registry and imported into containerd, and Kybernate installed as a user installs it:
`kubectl apply -k` of an overlay of the project's manifests/.

What the overlay changes, and why (each is a property of the test machine, not of Kybernate):
- the agent and kybernate-scheduler use the host network and reach the API server at
  127.0.0.1: the lent GPU machine has no CNI plugins and no usable iptables NAT for a Service
  address; GPU pods use the host network too. containerd still gets a CNI configuration, which
  its CRI needs to report the network ready; no plugin is ever called.
- the agent gets the driver's libraries (libnvidia-ml, libcuda) by a hostPath of their folder:
  the machine has no NVIDIA container toolkit.
- the agent's folders (socket, images) and containerd's socket are private folders of the run.
- --slots-per-gpu 4 and a short time-slice quantum (scenario 3), metrics and health ports
  moved off the defaults (host network).
"""
import base64
import glob
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

NODE = "kyb-gpu-node"
PORTS = {"etcd": 19379, "etcd-peer": 19380, "apiserver": 19443, "kcm": 19257, "scheduler": 19259,
         "kubelet": 19250, "kubelet-healthz": 19248, "agent-metrics": 19464, "kyb-scheduler": 19269}
API = f"https://127.0.0.1:{PORTS['apiserver']}"
CGROUP_ROOT = "/kybernate-gpu"


class Node:
    """The cluster of one run: processes, paths and an API client (admin)."""

    def __init__(self, bindir, pki, repo, work, log):
        self.bin, self.pki, self.repo, self.w, self.log = bindir, pki, repo, work, log
        self.procs = []
        for d in ("logs", "results", "images", "run-kybernate", "node", "deploy"):
            os.makedirs(os.path.join(work, d), exist_ok=True)
        self.ssl = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ssl.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.kubeconfig = self.write_kubeconfig("admin")

    # ------------------------------------------------------------------------- helpers
    def p(self, *a):
        return os.path.join(self.w, *a)

    def start(self, name, cmd, env=None):
        f = open(self.p("logs", name + ".log"), "a")
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        self.procs.append((name, proc))
        self.log(f"started {name} (pid {proc.pid})")
        return proc

    def wait(self, pred, timeout, what, every=0.2, proc=None):
        end = time.time() + timeout
        while time.time() < end:
            v = pred()
            if v:
                return v
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what}: the process exited ({proc.returncode}); see logs/")
            time.sleep(every)
        raise TimeoutError(f"{what}: not after {timeout}s")

    def api(self, method, path, body=None, ctype="application/json", ok404=False, timeout=20):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(API + path, data=data, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, context=self.ssl, timeout=timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if ok404 and e.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:600]!r}")

    def kubectl(self, *args, timeout=120, check=True, stdin=None):
        cmd = [os.path.join(self.bin, "kubectl"), "--kubeconfig", self.kubeconfig] + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and p.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: rc={p.returncode}: {p.stderr.strip()[-1500:]}")
        return p.stdout

    def write_kubeconfig(self, cert):
        rd = lambda n: base64.b64encode(open(os.path.join(self.pki, n), "rb").read()).decode()
        path = self.p(f"{cert}.kubeconfig")
        with open(path, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: kyb
  cluster: {{server: "{API}", certificate-authority-data: {rd('ca.crt')}}}
users:
- name: {cert}
  user: {{client-certificate-data: {rd(cert + '.crt')}, client-key-data: {rd(cert + '.key')}}}
contexts:
- name: kyb
  context: {{cluster: kyb, user: {cert}}}
current-context: kyb
""")
        os.chmod(path, 0o600)
        return path

    # ------------------------------------------------------------------- control plane
    def control_plane(self):
        b, k, pk = self.bin, PORTS, self.pki
        etcd = self.start("etcd", [f"{b}/etcd", "--name=kyb", f"--data-dir={self.p('etcd')}",
                                   f"--listen-client-urls=http://127.0.0.1:{k['etcd']}",
                                   f"--advertise-client-urls=http://127.0.0.1:{k['etcd']}",
                                   f"--listen-peer-urls=http://127.0.0.1:{k['etcd-peer']}",
                                   f"--initial-advertise-peer-urls=http://127.0.0.1:{k['etcd-peer']}",
                                   f"--initial-cluster=kyb=http://127.0.0.1:{k['etcd-peer']}",
                                   "--unsafe-no-fsync=true", "--log-level=warn"])
        self.wait(lambda: self.etcd_ok(), 60, "etcd healthy", proc=etcd)
        api = self.start("kube-apiserver", [
            f"{b}/kube-apiserver", f"--etcd-servers=http://127.0.0.1:{k['etcd']}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={k['apiserver']}", f"--cert-dir={self.p('apiserver')}",
            f"--tls-cert-file={pk}/apiserver.crt", f"--tls-private-key-file={pk}/apiserver.key",
            f"--client-ca-file={pk}/ca.crt", "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pk}/sa.pub", f"--service-account-signing-key-file={pk}/sa.key",
            f"--kubelet-client-certificate={pk}/admin.crt", f"--kubelet-client-key={pk}/admin.key",
            "--kubelet-preferred-address-types=InternalIP,Hostname", "--endpoint-reconciler-type=none", "--profiling=false"])
        self.wait(lambda: self.api_ok(), 90, "kube-apiserver ready", proc=api)
        kcm_kc, sched_kc = self.write_kubeconfig("kube-controller-manager"), self.write_kubeconfig("kube-scheduler")
        self.start("kube-controller-manager", [
            f"{b}/kube-controller-manager", f"--kubeconfig={kcm_kc}", "--bind-address=127.0.0.1",
            f"--secure-port={k['kcm']}", "--leader-elect=false",
            "--controllers=*,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller,-node-ipam-controller",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={pk}/sa.key",
            f"--root-ca-file={pk}/ca.crt", f"--cluster-signing-cert-file={pk}/ca.crt",
            f"--cluster-signing-key-file={pk}/ca.key", f"--flex-volume-plugin-dir={self.p('flexvolume')}",
            "--node-monitor-period=1s", "--profiling=false"])
        self.start("kube-scheduler", [f"{b}/kube-scheduler", f"--kubeconfig={sched_kc}", "--bind-address=127.0.0.1",
                                      f"--secure-port={k['scheduler']}", "--leader-elect=false", "--profiling=false"])

    def etcd_ok(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['etcd']}/health", timeout=2) as r:
                return b'"health":"true"' in r.read()
        except Exception:
            return False

    def api_ok(self):
        try:
            with urllib.request.urlopen(API + "/readyz", context=self.ssl, timeout=2) as r:
                return r.read().strip() == b"ok"
        except Exception:
            return False

    # ---------------------------------------------------------------------------- node
    def containerd(self, driver_root):
        n = self.p("node")
        # Both runtimes' shims come from the run's own folder: a machine's own containerd shims
        # (a rehearsal on a machine with Debian's containerd) must not stand in for missing ones.
        for shim in ("containerd-shim-runc-v2", "containerd-shim-kybernate-v1", "runc"):
            if not os.access(os.path.join(self.bin, shim), os.X_OK):
                raise RuntimeError(f"{shim} is not in {self.bin}")
        snapshotter = "native" if fstype(n) in ("overlay", "tmpfs") else "overlayfs"
        os.makedirs(f"{n}/cni/net.d", exist_ok=True)
        os.makedirs(f"{n}/cni/bin", exist_ok=True)
        # CRI reports the network ready once it has loaded a configuration; every pod of the run
        # uses the host network, so no plugin is called.
        with open(f"{n}/cni/net.d/10-kybernate.conflist", "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "kybernate-gpu", "plugins": [
                {"type": "bridge", "bridge": "kybgpu0", "isGateway": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.124.0.0/24"}]]}}]}, f)
        with open(self.p("shim.yaml"), "w") as f:
            # checkpointDir: the agent's --checkpoint-dir, where it decrypts spilled images.
            f.write(f"driverRoot: {driver_root}\ndeviceNodes: All\nagentSocket: {self.p('run-kybernate', 'agent.sock')}\n"
                    f"agentTimeout: 5m\ncriuTimeout: 5m\ncheckpointDir: {self.p('images')}\n")
        with open(f"{n}/containerd.toml", "w") as f:
            f.write(f"""version = 2
root = "{n}/containerd/root"
state = "{n}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{n}/containerd.sock"
[ttrpc]
  address = "{n}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{n}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/kybernate/pause:dev"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{self.bin}/runc"
        SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kybernate]
      runtime_type = "io.containerd.kybernate.v1"
      pod_annotations = ["kybernate.io/*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{n}/cni/bin"
    conf_dir = "{n}/cni/net.d"
    max_conf_num = 1
""")
        env = dict(os.environ, PATH=f"{self.bin}:" + os.environ["PATH"], KYBERNATE_SHIM_CONFIG=self.p("shim.yaml"))
        proc = self.start("containerd", [f"{self.bin}/containerd", "--config", f"{n}/containerd.toml"], env=env)
        self.wait(lambda: os.path.exists(f"{n}/containerd.sock"), 30, "containerd socket", proc=proc)
        return snapshotter

    def import_images(self, snapshotter, tarballs):
        t = time.time()
        p = subprocess.run([f"{self.bin}/ctr-import", self.p("node", "containerd.sock"), snapshotter] + tarballs,
                           capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"ctr-import: {p.stderr.strip()[-1500:]}")
        self.log(f"imported {p.stdout.split()} in {time.time() - t:.1f}s")

    def kubelet(self):
        n = self.p("node")
        enable_cgroup_controllers()
        kc = self.write_kubeconfig("kubelet")
        with open(f"{n}/kubelet.yaml", "w") as f:
            f.write(f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {CGROUP_ROOT}
failSwapOn: false
containerRuntimeEndpoint: unix://{n}/containerd.sock
port: {PORTS['kubelet']}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {PORTS['kubelet-healthz']}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {self.pki}/ca.crt}}
authorization:
  mode: Webhook
podLogsDir: {n}/pod-logs
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}}
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
serializeImagePulls: false
""")
        proc = self.start("kubelet", [f"{self.bin}/kubelet", f"--config={n}/kubelet.yaml", f"--kubeconfig={kc}",
                                      f"--root-dir={n}/kubelet", f"--cert-dir={n}/kubelet-pki",
                                      f"--hostname-override={NODE}", "--node-labels=kybernate.io/gpu-node=true", "--v=2"])

        def ready():
            node = self.api("GET", f"/api/v1/nodes/{NODE}", ok404=True)
            if not node:
                return False
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            return conds.get("Ready") == "True" and not node["spec"].get("taints")
        self.wait(ready, 90, f"node {NODE} Ready and untainted", proc=proc)

    # -------------------------------------------------------------------------- install
    def install(self, driver_libdir, quantum, factor, simulate=False, extra=None):
        """kubectl apply -k of an overlay of the project's manifests (see the module doc); EXTRA
        (a function of this node) adds resources and patches (scenario 7: the activator)."""
        d = self.p("deploy")
        shutil.rmtree(f"{d}/manifests", ignore_errors=True)
        shutil.copytree(os.path.join(self.repo, "manifests"), f"{d}/manifests")
        os.makedirs(f"{d}/overlay", exist_ok=True)
        # The time-slice quantum and its floor factor: in whichever of the scheduler's files
        # (config.yaml, controllers.yaml) sets them.
        files = self.generator_files(f"{d}/manifests/scheduler/kustomization.yaml")
        found = set()
        for name in files:
            cfg = open(f"{d}/manifests/scheduler/{name}").read()
            for key, val in (("timeSliceQuantum", quantum), ("timeSliceMinQuantumFactor", factor)):
                lines = [l for l in cfg.splitlines() if l.strip().startswith(key + ":")]
                if len(lines) == 1:
                    cfg = cfg.replace(lines[0], lines[0].split(":")[0] + f": {val}")
                    found.add(key)
            open(f"{d}/overlay/{name}", "w").write(cfg)
        if found != {"timeSliceQuantum", "timeSliceMinQuantumFactor"}:
            raise RuntimeError(f"manifests/scheduler {files}: timeSliceQuantum and timeSliceMinQuantumFactor not found once each")
        env_api = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                   {"name": "KUBERNETES_SERVICE_PORT", "value": str(PORTS["apiserver"])}]
        host_net = [{"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
                    {"op": "add", "path": "/spec/template/spec/dnsPolicy", "value": "ClusterFirstWithHostNet"}]
        sock = self.p("node", "containerd.sock")
        agent = host_net + [
            {"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": with_flags(
                self.container(f"{d}/manifests/agent/daemonset.yaml")["command"],
                {"--metrics-bind-address": f":{PORTS['agent-metrics']}", "--slots-per-gpu": "4",
                 "--containerd-socket": sock, **AGENT_FLAGS, "--checkpoint-dir": self.p("images"),
                 "--disk-tier-dir": self.p("tiers")},
                # Rehearsal on a machine without a GPU only: the agent's simulated GPUs.
                ["--simulate", "--simulate-node-selector=kybernate.io/gpu-node=true"] if simulate else [])},
            {"op": "replace", "path": "/spec/template/spec/containers/0/ports",
             "value": [{"name": "metrics", "containerPort": PORTS["agent-metrics"], "protocol": "TCP"}]},
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
             "value": {"name": "LD_LIBRARY_PATH", "value": driver_libdir}},
            *[{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": e} for e in env_api],
            {"op": "add", "path": "/spec/template/spec/volumes/-",
             "value": {"name": "driver", "hostPath": {"path": driver_libdir, "type": "Directory"}}},
            {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
             "value": {"name": "driver", "mountPath": driver_libdir, "readOnly": True}},
            {"op": "add", "path": "/spec/template/spec/volumes/-",
             "value": {"name": "node-containerd", "hostPath": {"path": sock, "type": "Socket"}}},
            {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
             "value": {"name": "node-containerd", "mountPath": sock}},
        ]
        vols = self.daemonset_volumes(f"{d}/manifests/agent/daemonset.yaml")
        for i, v in enumerate(vols):
            where = {"run": self.p("run-kybernate"), "images": self.p("images"), "containerd": self.p("node")}.get(v["name"])
            if where:
                agent.append({"op": "replace", "path": f"/spec/template/spec/volumes/{i}/hostPath/path", "value": where})
        # The images and the disk tier at the same paths as on the host: the agent names image
        # folders to the shim, which runs on the host.
        mounts = self.container(f"{d}/manifests/agent/daemonset.yaml")["volumeMounts"]
        agent.append({"op": "replace", "value": self.p("images"),
                      "path": f"/spec/template/spec/containers/0/volumeMounts/{[m['name'] for m in mounts].index('images')}/mountPath"})
        os.makedirs(self.p("tiers"), exist_ok=True)
        agent += [{"op": "add", "path": "/spec/template/spec/volumes/-",
                   "value": {"name": "tiers", "hostPath": {"path": self.p("tiers"), "type": "Directory"}}},
                  {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
                   "value": {"name": "tiers", "mountPath": self.p("tiers")}}]
        probe = lambda: {"httpGet": {"path": "/healthz", "port": PORTS["kyb-scheduler"], "scheme": "HTTPS"}}
        sched = host_net + [
            {"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": with_flags(
                self.container(f"{d}/manifests/scheduler/deployment.yaml")["command"],
                {"--secure-port": str(PORTS["kyb-scheduler"])})},
            {"op": "replace", "path": "/spec/template/spec/containers/0/ports",
             "value": [{"name": "https", "containerPort": PORTS["kyb-scheduler"], "protocol": "TCP"}]},
            {"op": "replace", "path": "/spec/template/spec/containers/0/livenessProbe", "value": probe()},
            {"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe", "value": probe()},
            {"op": "add", "path": "/spec/template/spec/containers/0/env", "value": env_api},
        ]
        kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": ["../manifests"],
                "configMapGenerator": [{"name": "kybernate-scheduler-config", "namespace": "kybernate-system",
                                        "behavior": "replace", "files": files}],
                "patches": [
                    {"target": {"kind": "DaemonSet", "name": "kybernate-agent"}, "patch": json.dumps(agent)},
                    {"target": {"kind": "Deployment", "name": "kybernate-scheduler"}, "patch": json.dumps(sched)}]}
        if extra:
            add = extra(self)
            kust["resources"] += add.get("resources", [])
            kust["patches"] += add.get("patches", [])
        # JSON is YAML: kustomize reads it as kustomization.yaml.
        with open(f"{d}/overlay/kustomization.yaml", "w") as f:
            json.dump(kust, f, indent=1)
        out = self.kubectl("apply", "--server-side", "-k", f"{d}/overlay", timeout=120)
        self.log("kubectl apply -k:", " | ".join(out.strip().splitlines()))

    @staticmethod
    def generator_files(path):
        """The files of the scheduler's configMapGenerator."""
        import yaml
        k = yaml.safe_load(open(path))
        for g in k.get("configMapGenerator") or []:
            if g["name"] == "kybernate-scheduler-config":
                return list(g["files"])
        raise RuntimeError(f"{path}: no configMapGenerator kybernate-scheduler-config")

    @staticmethod
    def container(path):
        """The first container of the workload in PATH."""
        import yaml
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            if doc and doc.get("kind") in ("DaemonSet", "Deployment"):
                return doc["spec"]["template"]["spec"]["containers"][0]
        raise RuntimeError(f"no workload in {path}")

    @staticmethod
    def daemonset_volumes(path):
        """The agent DaemonSet's volumes in their order (patches address them by index)."""
        import yaml
        for doc in yaml.safe_load_all(open(path)):
            if doc and doc.get("kind") == "DaemonSet":
                return doc["spec"]["template"]["spec"]["volumes"]
        raise RuntimeError(f"no DaemonSet in {path}")

    def stop(self):
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        end = time.time() + 15
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()


# The storage tiers: a mark no scenario's parked memory reaches (a pod that sleeps on disk is
# spilled whatever the mark: scenario 8), the policy looking every second, and a create of a
# spilled container held long enough for the scenario's Resume to restore it at once.
TIER_FLAGS = {"--parked-memory-high-water": "100Gi", "--tier-interval": "1s", "--spilled-create-hold": "90s"}
# The agent's flags beyond the manifests' besides paths and ports: the tiers, and huge pages for
# the driver's checkpoint buffers while checkpoints run (issue 22's THP window).
AGENT_FLAGS = dict(TIER_FLAGS, **{"--thp-window": "true"})


def with_flags(command, values, extra=()):
    """COMMAND with each --flag of VALUES set to its value (replaced, or added before the last
    argument), then EXTRA."""
    out, seen = [], set()
    for a in command:
        key = a.split("=", 1)[0]
        if key in values:
            out.append(f"{key}={values[key]}")
            seen.add(key)
        else:
            out.append(a)
    out += [f"{k}={v}" for k, v in values.items() if k not in seen]
    return out + list(extra)


def fstype(path):
    p = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return p.stdout.strip()


def enable_cgroup_controllers():
    """Creates the kubelet's cgroupRoot, which it wants to exist. cgroup v2: with every
    controller delegated from the root down to it (without systemd the root may delegate none);
    v1: in every hierarchy (cpuset with its parent's CPUs and memory nodes)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        for d in ("/sys/fs/cgroup", "/sys/fs/cgroup" + CGROUP_ROOT):
            os.makedirs(d, exist_ok=True)
            ctl = os.path.join(d, "cgroup.subtree_control")
            have = set(open(ctl).read().split())
            for c in open(os.path.join(d, "cgroup.controllers")).read().split():
                if c not in have:
                    try:
                        with open(ctl, "w") as f:
                            f.write("+" + c)
                    except OSError:
                        pass
        return
    for h in glob.glob("/sys/fs/cgroup/*/"):
        if os.path.islink(h.rstrip("/")) or not os.path.exists(os.path.join(h, "cgroup.procs")):
            continue
        d = os.path.join(h, CGROUP_ROOT.strip("/"))
        os.makedirs(d, exist_ok=True)
        for f in ("cpuset.cpus", "cpuset.mems"):
            if os.path.exists(os.path.join(d, f)) and not open(os.path.join(d, f)).read().strip():
                with open(os.path.join(d, f), "w") as w:
                    w.write(open(os.path.join(h, f)).read().strip())


def driver_paths():
    """(driverRoot for the shim, the folder holding libcuda.so.1 / libnvidia-ml.so.1)."""
    p = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True)
    cands = [l.split("=>")[-1].strip() for l in p.stdout.splitlines() if "libnvidia-ml.so.1 " in l]
    cands += glob.glob("/usr/local/nvidia/lib64/libnvidia-ml.so.1") + glob.glob("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
    for c in cands:
        d = os.path.dirname(c)
        if not os.path.exists(os.path.join(d, "libcuda.so.1")):
            continue
        for sub in ("usr/lib/x86_64-linux-gnu", "usr/lib64", "lib/x86_64-linux-gnu", "lib64", "usr/lib", "lib"):
            if d.rstrip("/").endswith("/" + sub) or d == "/" + sub:
                return (d[: len(d) - len(sub)] or "/"), d
    return None, None
