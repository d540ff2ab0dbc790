#!/usr/bin/env python3
"""GPU containers under containerd-shim-kybernate-v1 on a GPU machine (issue: suspend, resume
onto another GPU, checkpoint and restore). Started by run-container.sh, which unpacked the
binaries into --bin and CRIU into --criu.

Brings up: etcd + kube-apiserver (no kubelet: Node and Pod objects only, as run-agent.sh),
a private containerd (runtime io.containerd.kybernate.v1 = our shim, runc, CRIU 4.1 on its
PATH), kybernate-agent (real driver) on a unix socket. Containers are created with ctr from
OCI specs written here: the rootfs is an empty folder plus read-only bind mounts of the host's
/usr/lib, /usr/bin, ... and the Python tree (see README.md); GPU device nodes and driver
libraries come from the shim's patching (kybernate.io/gpus). Each container is placed in the
cgroup kubepods/besteffort/pod<UID>/<64 hex> with the kubelet's labels, so that the agent maps
its processes to its Pod object as on a node.

Experiments (each result saved to $OUT as it comes):
  0. reference: an uninterrupted run (losses to compare against)
  1. in-place suspend/resume through the agent's gRPC API
  2. resume onto the other GPU with deviceNodes All, Assigned, AllRestricted
  3. checkpoint (agent Checkpoint RPC) and restore into a new container on the other GPU
  4. timings against the pinned-memcpy rate

Writes results.json as it goes, and at the end container-results.md, rendered from it by
container_report.py with the checks of container_checks.py (expected beside measured outcome).
Exits 1 when any check failed or the run broke off, 0 only when every check passed.
`--report-from results.json` writes the report of an earlier run (or of a document of several
runs, as results/ keeps them) to stdout, with the same exit status.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import traceback
import urllib.request

import container_checks
import container_report

AP = argparse.ArgumentParser()
AP.add_argument("--bin")
AP.add_argument("--criu", help="folder holding criu")
AP.add_argument("--pki")
AP.add_argument("--crds")
AP.add_argument("--work", default="/tmp/kyb")
AP.add_argument("--out")
AP.add_argument("--steps", type=int, default=1200)
AP.add_argument("--ballast-gib", type=float, default=4)
AP.add_argument("--only", default="", help="comma list of experiments to run (0,1,2,3,4)")
AP.add_argument("--report-from", metavar="RESULTS_JSON", help="only write the report of an earlier run to stdout")
ARGS = AP.parse_args()
if ARGS.report_from:
    sys.exit(container_report.main(ARGS.report_from))
if not all((ARGS.bin, ARGS.criu, ARGS.pki, ARGS.crds, ARGS.out)):
    AP.error("--bin, --criu, --pki, --crds and --out are required for a run")

HERE = os.path.dirname(os.path.abspath(__file__))
W = ARGS.work
OUT = ARGS.out
NS, NODE = "ml", "gpu-node"
R = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "experiments": {}, "errors": [], "setup": {}}
LOGF = open(os.path.join(OUT, "suite.log"), "a", buffering=1)
T0 = time.time()
PROCS = []


def log(*a):
    line = f"[{time.time() - T0:7.1f}s] " + " ".join(str(x) for x in a)
    print(line, flush=True)
    LOGF.write(line + "\n")


def save():
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(R, f, indent=1, sort_keys=True, default=str)


def run(cmd, timeout=60, check=False, env=None):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:4])}... rc={p.returncode}: {p.stderr.strip()[-2000:]} {p.stdout.strip()[-500:]}")
    return p.returncode, p.stdout, p.stderr, time.time() - t


def start(name, cmd, env=None):
    f = open(os.path.join(W, "logs", name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    PROCS.append((name, p))
    return p


def wait_until(pred, timeout, what, every=0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"{what}: not after {timeout}s")


# ------------------------------------------------------------------------ control plane
API = "https://127.0.0.1:26443"
SSL = ssl.create_default_context(cafile=os.path.join(ARGS.pki, "ca.crt"))
SSL.load_cert_chain(os.path.join(ARGS.pki, "admin.crt"), os.path.join(ARGS.pki, "admin.key"))


def api(method, path, body=None, ctype="application/json", ok404=False):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, context=SSL, timeout=20) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        if ok404 and e.code in (404, 409):
            return None
        raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:500]!r}")


def control_plane():
    b = ARGS.bin
    start("etcd", [f"{b}/etcd", "--name=kyb", f"--data-dir={W}/etcd", "--listen-client-urls=http://127.0.0.1:23790",
                   "--advertise-client-urls=http://127.0.0.1:23790", "--listen-peer-urls=http://127.0.0.1:23791",
                   "--initial-advertise-peer-urls=http://127.0.0.1:23791", "--initial-cluster=kyb=http://127.0.0.1:23791",
                   "--unsafe-no-fsync=true", "--log-level=warn"])
    pki = ARGS.pki
    start("kube-apiserver", [f"{b}/kube-apiserver", "--etcd-servers=http://127.0.0.1:23790", "--bind-address=127.0.0.1",
                             "--advertise-address=127.0.0.1", "--secure-port=26443", f"--cert-dir={W}/apiserver",
                             f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
                             f"--client-ca-file={pki}/ca.crt", "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/16",
                             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                             f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
                             "--endpoint-reconciler-type=none", "--profiling=false"])

    def ready():
        try:
            req = urllib.request.Request(API + "/readyz")
            with urllib.request.urlopen(req, context=SSL, timeout=2) as r:
                return r.read() == b"ok"
        except Exception:
            return False
    wait_until(ready, 120, "kube-apiserver ready", 0.5)
    for crd in json.load(open(ARGS.crds)):
        api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    for crd in json.load(open(ARGS.crds)):
        name = crd["metadata"]["name"]

        def est():
            c = api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return any(x["type"] == "Established" and x["status"] == "True" for x in c.get("status", {}).get("conditions", []))
        wait_until(est, 60, f"crd {name}", 0.5)
    api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    api("POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "default"}}, ok404=True)
    api("POST", "/api/v1/nodes", {"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}})
    log("control plane up")


def make_pod(name, gpu):
    p = api("POST", f"/api/v1/namespaces/{NS}/pods", {
        "metadata": {"name": name, "annotations": {"kybernate.io/gpus": gpu}},
        "spec": {"nodeName": NODE, "automountServiceAccountToken": False, "restartPolicy": "Never",
                 "containers": [{"name": "train", "image": "host-python"}]}})
    api("PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", {"status": {"phase": "Running"}}, ctype="application/merge-patch+json")
    return p["metadata"]["uid"]


def pod_annotations(name):
    return api("GET", f"/api/v1/namespaces/{NS}/pods/{name}")["metadata"].get("annotations", {})


# ------------------------------------------------------------------------------ GPUs
def smi_gpus():
    _, o, _, _ = run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.used,memory.total,driver_version", "--format=csv,noheader,nounits"])
    out = []
    for line in o.strip().splitlines():
        i, u, n, used, tot, drv = [x.strip() for x in line.split(",")]
        out.append({"index": int(i), "uuid": u, "name": n, "used_mib": int(used), "total_mib": int(tot), "driver": drv})
    return out


def smi_apps():
    _, o, _, _ = run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"])
    out = []
    for line in o.strip().splitlines():
        if line.strip() and "No running" not in line:
            p, u, m = [x.strip() for x in line.split(",")]
            out.append({"pid": int(p), "uuid": u, "mib": int(m) if m.isdigit() else m})
    return out


# ------------------------------------------------------------------------- containerd
SOCK = f"{W}/ctrd/containerd.sock"
AGENT_SOCK = f"{W}/agent.sock"
SHIM_CFG = f"{W}/shim.yaml"
ROOTFS = f"{W}/rootfs"
RESULTS = f"{W}/results"
IMAGES = f"{W}/images"


def driver_root():
    """The shim's driverRoot: the folder below which libcuda.so.1 sits in one of the shim's
    library folders."""
    _, o, _, _ = run(["ldconfig", "-p"])
    cands = [l.split("=>")[-1].strip() for l in o.splitlines() if "libcuda.so.1 " in l]
    cands += glob.glob("/usr/local/nvidia/lib64/libcuda.so.1") + glob.glob("/usr/lib/x86_64-linux-gnu/libcuda.so.1")
    for c in cands:
        d = os.path.dirname(os.path.realpath(c)) if not os.path.islink(os.path.dirname(c)) else os.path.dirname(c)
        d = os.path.dirname(c)
        for sub in ("usr/lib/x86_64-linux-gnu", "usr/lib64", "lib/x86_64-linux-gnu", "lib64", "usr/lib", "lib"):
            if d.rstrip("/").endswith("/" + sub) or d == "/" + sub:
                return d[: len(d) - len(sub)] or "/", c
    raise RuntimeError(f"no libcuda.so.1 found (ldconfig: {cands})")


def write_shim_config(device_nodes, cgroups="soft"):
    with open(SHIM_CFG, "w") as f:
        f.write(f"driverRoot: {R['setup']['driver_root']}\ndeviceNodes: {device_nodes}\nagentSocket: {AGENT_SOCK}\n"
                f"agentTimeout: 5m\ncriuTimeout: 5m\nmanageCgroupsMode: {cgroups}\n")


def containerd():
    os.makedirs(f"{W}/ctrd", exist_ok=True)
    with open(f"{W}/ctrd/config.toml", "w") as f:
        f.write(f'version = 2\nroot = "{W}/ctrd/root"\nstate = "{W}/ctrd/state"\n[grpc]\n  address = "{SOCK}"\n'
                f'[ttrpc]\n  address = "{SOCK}.ttrpc"\n[debug]\n  address = ""\n  level = "info"\n')
    env = dict(os.environ, PATH=f"{ARGS.bin}:{ARGS.criu}:" + os.environ["PATH"], KYBERNATE_SHIM_CONFIG=SHIM_CFG)
    start("containerd", [f"{ARGS.bin}/containerd", "--config", f"{W}/ctrd/config.toml"], env=env)
    wait_until(lambda: os.path.exists(SOCK), 30, "containerd socket")
    log("containerd up")


def agent():
    kc = f"{W}/admin.kubeconfig"
    import base64
    rd = lambda p: base64.b64encode(open(os.path.join(ARGS.pki, p), "rb").read()).decode()
    with open(kc, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: gpu
  cluster: {{server: "{API}", certificate-authority-data: {rd('ca.crt')}}}
users:
- name: admin
  user: {{client-certificate-data: {rd('admin.crt')}, client-key-data: {rd('admin.key')}}}
contexts:
- name: gpu
  context: {{cluster: gpu, user: admin}}
current-context: gpu
""")
    start("agent", [f"{ARGS.bin}/kybernate-agent", "--kubeconfig", kc, "--node-name", NODE, "--socket", AGENT_SOCK,
                    "--containerd-socket", SOCK, "--metrics-bind-address=", "--host-memory-reserve=4Gi", "-v=4"])
    wait_until(lambda: os.path.exists(AGENT_SOCK), 90, "agent socket", 0.5)
    inv = agentctl("inventory")
    R["setup"]["agent_inventory"] = inv
    log("agent up:", json.dumps(inv)[:400])


def agentctl(*a, timeout=330):
    rc, o, e, dt = run([f"{ARGS.bin}/agentctl", "--socket", AGENT_SOCK] + list(a), timeout=timeout)
    try:
        d = json.loads(o.strip().splitlines()[-1])
    except Exception:
        d = {"error": f"agentctl rc={rc}: {o} {e}"}
    d["client_wall_s"] = dt
    return d


# ---------------------------------------------------------------------------- rootfs
def rootfs_and_mounts():
    """An empty rootfs plus read-only binds of the host's libraries and Python tree."""
    _, o, _, _ = run(["python3", "-c", "import sys, torch, os; print(os.path.realpath(sys.executable)); print(sys.executable); "
                      "print(sys.prefix); print(sys.base_prefix); print(os.path.dirname(torch.__file__))"], timeout=120, check=True)
    real_exe, exe, prefix, base, torchdir = o.strip().splitlines()[-5:]
    R["setup"]["python"] = {"executable": exe, "realpath": real_exe, "prefix": prefix, "base_prefix": base, "torch": torchdir}
    os.makedirs(ROOTFS, exist_ok=True)
    for d in ("proc", "sys", "dev", "tmp", "etc", "usr/local", "work", "results", "root"):
        os.makedirs(os.path.join(ROOTFS, d), exist_ok=True)
    os.chmod(os.path.join(ROOTFS, "tmp"), 0o1777)
    binds = []
    for top in ("/lib", "/lib64", "/bin", "/sbin", "/lib32", "/libx32"):
        if os.path.islink(top):
            t = os.path.join(ROOTFS, top[1:])
            if not os.path.lexists(t):
                os.symlink(os.readlink(top), t)
        elif os.path.isdir(top):
            binds.append(top)
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/bin", "/usr/sbin", "/usr/share", "/usr/local/lib", "/usr/local/bin", "/opt"):
        if os.path.isdir(d) and not os.path.islink(d):
            binds.append(d)
    for p in (prefix, base, os.path.dirname(os.path.dirname(real_exe)), os.path.dirname(os.path.dirname(torchdir))):
        p = os.path.realpath(p)
        if p in ("/", "/usr", "/usr/local") or any(p == b or p.startswith(b + "/") for b in binds):
            continue
        binds.append(p)
    for f in ("passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache", "ld.so.conf"):
        if os.path.exists("/etc/" + f):
            shutil.copy("/etc/" + f, os.path.join(ROOTFS, "etc", f))
    if os.path.isdir("/etc/ld.so.conf.d") and not os.path.exists(os.path.join(ROOTFS, "etc/ld.so.conf.d")):
        shutil.copytree("/etc/ld.so.conf.d", os.path.join(ROOTFS, "etc/ld.so.conf.d"))
    R["setup"]["rootfs"] = {"path": ROOTFS, "read_only_binds": binds}
    return exe, binds


def oci_spec(name, uid, cid, gpu, env, binds, exe, annotations=None, results=None):
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for b in binds:
        mounts.append({"destination": b, "type": "bind", "source": b, "options": ["rbind", "ro", "nosuid", "nodev"]})
    mounts.append({"destination": "/work", "type": "bind", "source": HERE, "options": ["rbind", "ro"]})
    mounts.append({"destination": "/results", "type": "bind", "source": results or RESULTS, "options": ["rbind", "rw"]})
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
            "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
    dev_allow = [{"allow": False, "access": "rwm"}] + [
        {"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"} for ma, mi in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2))] + [
        {"allow": True, "type": "c", "major": 136, "access": "rwm"}]
    ann = {"kybernate.io/gpus": gpu, "io.kubernetes.cri.sandbox-namespace": NS, "io.kubernetes.cri.sandbox-name": name,
           "io.kubernetes.cri.sandbox-uid": uid, "io.kubernetes.cri.container-type": "container"}
    ann.update(annotations or {})
    return {
        "ociVersion": "1.1.0",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/",
                    "args": [exe, "/work/train.py"],
                    "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1",
                            "CUBLAS_WORKSPACE_CONFIG=:4096:8", "NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1",
                            "NVSHMEM_DISABLE_NVLS=1"] + env,
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True},
        "root": {"path": ROOTFS, "readonly": False},
        "hostname": name,
        "mounts": mounts,
        "annotations": ann,
        "linux": {
            "cgroupsPath": f"/kubepods/besteffort/pod{uid}/{cid}",
            "resources": {"devices": dev_allow},
            # The host's network: CRIU then needs neither ip nor iptables (the container's
            # network is external to it).
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


CTRS = {}


def ctr(*a, timeout=300):
    return agentctl("--containerd", SOCK, "--namespace", "k8s.io", *a, timeout=timeout)


def new_container(name, gpu, steps, ballast, exe, binds, annotations=None, losses=None, results=None):
    """RESULTS: the host folder mounted at /results (default the shared one)."""
    uid = make_pod(name, gpu)
    cid = os.urandom(32).hex()
    losses = losses or f"{name}.jsonl"
    env = [f"SEED=7", f"STEPS={steps}", f"BALLAST_GIB={ballast}", f"LOSSES=/results/{losses}", "PACE=0.02"]
    spec = oci_spec(name, uid, cid, gpu, env, binds, exe, annotations, results)
    path = f"{W}/specs/{name}.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(spec, open(path, "w"), indent=1)
    labels = [f"io.kubernetes.pod.namespace={NS}", f"io.kubernetes.pod.name={name}", f"io.kubernetes.pod.uid={uid}",
              "io.kubernetes.container.name=train", "io.cri-containerd.kind=container"]
    r = ctr("ctr-run", path, cid, "io.containerd.kybernate.v1", f"{W}/logs/ctr-{name}.log", *labels)
    CTRS[name] = {"cid": cid, "uid": uid, "losses": f"{results or RESULTS}/{losses}", "gpu": gpu, "pid": (r.get("response") or {}).get("pid")}
    r.update({"rc": 1 if "error" in r else 0, "cid": cid, "uid": uid})
    return r


def read_losses(name):
    p = CTRS[name]["losses"]
    # Steps by index for lookups, and every step line in file order: a step written twice (a
    # restarted process, not a restored one) shows in "twice".
    out = {"steps": {}, "order": [], "twice": [], "start": [], "done": None}
    if not os.path.exists(p):
        return out
    for line in open(p):
        try:
            d = json.loads(line)
        except Exception:
            continue
        if "step" in d:
            if d["step"] in out["steps"]:
                out["twice"].append(d["step"])
            out["steps"][d["step"]] = d
            out["order"].append(d)
        elif d.get("started"):
            out["start"].append(d)
        elif d.get("done"):
            out["done"] = d
    return out


def last_step(name):
    s = read_losses(name)["steps"]
    return max(s) if s else -1


def task_pids(name):
    r = ctr("ctr-ps", CTRS[name]["cid"], timeout=20)
    pids = [int(p) for p in r.get("response") or []]
    # After a CRIU restore on cgroup v2 the task's cgroup may be empty (see exp3): its init.
    init = CTRS[name].get("pid")
    if not pids and init and os.path.exists(f"/proc/{init}") and "error" not in r:
        pids = [init]
    return pids


def compare(name, ref, upto):
    got = read_losses(name)
    rs, gs = ref["steps"], got["steps"]
    n = min(upto, len(rs))
    missing = [i for i in range(n) if i not in gs]
    diff = [i for i in range(n) if i in gs and gs[i]["loss"] != rs[i]["loss"]]
    lines = got["order"] + got["start"] + ([got["done"]] if got["done"] else [])
    tokens = sorted({d.get("token") for d in lines} - {None})
    starts = sorted({d.get("start") for d in lines} - {None})
    one = len(got["start"]) == 1 and len(tokens) == 1 and len(starts) == 1
    return {"steps_compared": n, "missing": missing[:10], "n_missing": len(missing), "n_different": len(diff),
            "first_different": diff[:5], "steps_twice": got["twice"][:10], "tokens": tokens, "start_counters": starts,
            "one_process_started_once": one,
            "identical": not missing and not diff and not got["twice"] and one, "done": got["done"],
            "loss_first": float.fromhex(gs[0]["loss"]) if 0 in gs else None,
            "loss_last": float.fromhex(gs[n - 1]["loss"]) if (n - 1) in gs else None}


def wait_done(name, timeout):
    """Waits for the done line; gives up early when the container's task has no process."""
    end = time.time() + timeout
    while time.time() < end:
        if read_losses(name)["done"]:
            return True
        for _ in range(10):
            time.sleep(0.5)
            if read_losses(name)["done"]:
                return True
        if not task_pids(name):
            return "task gone"
    return False


def gpu_of_pid(pids):
    apps = smi_apps()
    return [a for a in apps if a["pid"] in pids]


def libcuda_path(pid):
    try:
        for line in open(f"/proc/{pid}/maps"):
            if "libcuda.so" in line:
                return line.split()[-1]
    except Exception as e:
        return f"? {e}"
    return None


def proc_devs(pid):
    out = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("/dev/nvidia"):
                out.append(t)
    except Exception:
        pass
    return sorted(set(out))


# ------------------------------------------------------------------------ experiments
def exp_ref(ctx):
    res = new_container("ref", ctx["uuids"][1], ARGS.steps, 1, ctx["exe"], ctx["binds"])
    res["note"] = "uninterrupted run, same seed, on GPU1, started next to experiment 1"
    return res


def suspend_resume(name, to=None, hold=3.0, at=150):
    """Suspends at step >= at through the agent, holds, resumes (onto to when given)."""
    r = {}
    wait_until(lambda: last_step(name) >= at, 240, f"{name} at step {at}", 0.2)
    pids = task_pids(name)
    r["pids"] = pids
    r["before"] = {"apps": gpu_of_pid(pids), "gpus": smi_gpus(), "libcuda_mapped_from": libcuda_path(pids[0]) if pids else None,
                   "dev_fds": proc_devs(pids[0]) if pids else None,
                   "cuda_visible": read_losses(name)["start"][:1]}
    r["suspend"] = agentctl("suspend", f"{NS}/{name}")
    s0 = last_step(name)
    time.sleep(hold)
    r["during"] = {"apps": gpu_of_pid(pids), "gpus": smi_gpus(), "steps_during_hold": last_step(name) - s0,
                   "pod": pod_annotations(name), "dev_fds": proc_devs(pids[0]) if pids else None}
    args = ["resume", f"{NS}/{name}"]
    if to:
        args = ["--to", to] + args
    r["resume"] = agentctl(*args)
    time.sleep(1.0)
    r["after"] = {"apps": gpu_of_pid(pids), "gpus": smi_gpus(), "pod": pod_annotations(name), "last_step": last_step(name),
                  "dev_fds": proc_devs(pids[0]) if pids else None}
    return r


def exp1(ctx):
    r = {"create": new_container("e1", ctx["uuids"][0], ARGS.steps, ARGS.ballast_gib, ctx["exe"], ctx["binds"])}
    if r["create"]["rc"] != 0:
        return r
    r.update(suspend_resume("e1", at=200))
    r["finished"] = wait_done("e1", 180)
    return r


def exp2(ctx, mode):
    write_shim_config(mode)
    name = "e2-" + mode.lower()
    steps = 500
    r = {"deviceNodes": mode, "create": new_container(name, ctx["uuids"][0], steps, 1, ctx["exe"], ctx["binds"])}
    if r["create"]["rc"] != 0:
        return r
    r.update(suspend_resume(name, to=ctx["uuids"][1], at=150))
    if "error" in r["resume"]:
        # Back onto its own GPU, so that the container ends cleanly; then it is stopped.
        r["resume_back_to_gpu0"] = agentctl("resume", f"{NS}/{name}")
    r["finished"] = wait_done(name, 60)
    r["compare"] = compare(name, ctx["ref"], steps)
    return r


def cgroup_of(pid):
    try:
        return open(f"/proc/{pid}/cgroup").read().strip()
    except Exception as e:
        return f"? {e}"


def exp3(ctx, mode, cgroups="soft", e3="e3"):
    write_shim_config(mode, cgroups)
    e3r = e3 + "r"
    r = {"deviceNodes": mode, "manageCgroupsMode": cgroups,
         "create": new_container(e3, ctx["uuids"][0], ARGS.steps, ARGS.ballast_gib, ctx["exe"], ctx["binds"])}
    if r["create"]["rc"] != 0:
        return r
    wait_until(lambda: last_step(e3) >= 300, 240, f"{e3} at step 300", 0.2)
    pids = task_pids(e3)
    r["cgroup_before"] = cgroup_of(pids[0]) if pids else None
    r["before"] = {"pids": pids, "apps": gpu_of_pid(pids), "gpus": smi_gpus()}
    img = f"{IMAGES}/{e3}"
    r["checkpoint"] = agentctl("checkpoint", f"{NS}/{e3}/train", img)
    r["stopped_at_step"] = last_step(e3)
    time.sleep(1)
    r["after_checkpoint"] = {"gpus": smi_gpus(), "pids_alive": [p for p in pids if os.path.exists(f"/proc/{p}")]}
    _, du, _, _ = run(["du", "-sb", img])
    r["image_bytes"] = int(du.split()[0]) if du else None
    try:
        r["metadata"] = json.load(open(f"{img}/metadata.json"))
        r["metadata"]["files"] = len(r["metadata"].get("files", []))
    except Exception as e:
        r["metadata"] = f"? {e}"
    if "error" in r["checkpoint"]:
        return r
    # The restored container writes into a file of its own: its /results is another folder,
    # holding a copy of the original's file as it was at the checkpoint (the restored process
    # reopens it at the same offset). The original file must get no line after the checkpoint,
    # and the copy only lines of the same process (token, start) after it, each step once.
    rdir = f"{RESULTS}/{e3r}"
    os.makedirs(rdir, exist_ok=True)
    os.chmod(rdir, 0o777)
    orig = CTRS[e3]["losses"]
    shutil.copy2(orig, f"{rdir}/{e3}.jsonl")
    r["original_lines_at_checkpoint"] = sum(1 for _ in open(orig))
    t = time.time()
    r["restore"] = new_container(e3r, ctx["uuids"][1], ARGS.steps, ARGS.ballast_gib, ctx["exe"], ctx["binds"],
                                 annotations={"kybernate.io/restore-from": img}, losses=f"{e3}.jsonl", results=rdir)
    r["restore_wall_s"] = time.time() - t
    if r["restore"]["rc"] != 0:
        return r
    time.sleep(1)
    pids = task_pids(e3r)
    r["after_restore"] = {"pids": pids, "apps": gpu_of_pid(pids), "gpus": smi_gpus(), "dev_fds": proc_devs(pids[0]) if pids else None,
                        "cgroup": cgroup_of(pids[0]) if pids else None}
    r["finished"] = wait_done(e3r, 240)
    r["compare"] = compare(e3r, ctx["ref"], ARGS.steps)
    r["original_lines_after"] = sum(1 for _ in open(orig))
    if r["original_lines_after"] != r["original_lines_at_checkpoint"]:
        r["exception"] = (f"the original container's file grew after the checkpoint ({r['original_lines_at_checkpoint']} -> "
                          f"{r['original_lines_after']} lines): the original process went on")
    return r


def pinned_memcpy():
    code = r"""
import torch, time, json
n = 4 << 30
h = torch.empty(n, dtype=torch.uint8, pin_memory=True); d = torch.empty(n, dtype=torch.uint8, device='cuda:0')
h.fill_(1); torch.cuda.synchronize()
def t(f):
    f(); torch.cuda.synchronize(); s = time.time(); f(); torch.cuda.synchronize(); return n / (time.time() - s) / 1e9
print(json.dumps({"htod_gbs": t(lambda: d.copy_(h, non_blocking=True)), "dtoh_gbs": t(lambda: h.copy_(d, non_blocking=True))}))
"""
    rc, o, e, _ = run(["python3", "-c", code], timeout=120)
    try:
        return json.loads(o.strip().splitlines()[-1])
    except Exception:
        return {"error": e[-1000:]}


def experiment(key, fn, *a):
    log("experiment", key, "...")
    t = time.time()
    try:
        res = fn(*a)
    except Exception as e:
        res = {"exception": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    res["duration_s"] = time.time() - t
    R["experiments"][key] = res
    save()
    log("experiment", key, "done:", json.dumps(res, default=str)[:1500])
    return res


def collect_logs():
    for name in ("agent", "containerd"):
        p = os.path.join(W, "logs", name + ".log")
        if os.path.exists(p):
            lines = open(p, errors="replace").read().splitlines()
            keep = [l for l in lines if any(k in l for k in ("kybernate", "rror", "estor", "heckpoint", "uspend", "esum", "level=warn"))]
            with open(os.path.join(OUT, name + ".log"), "w") as f:
                f.write("\n".join(keep[-1500:]) + "\n")
    with open(os.path.join(OUT, "containers.log"), "w") as f:
        for p in sorted(glob.glob(f"{W}/logs/ctr-*.log")) + sorted(glob.glob(f"{W}/ctrd/state/**/criu-restore/*.log", recursive=True)) + \
                sorted(glob.glob(f"{IMAGES}/*/*.log")):
            f.write(f"==== {p}\n" + open(p, errors="replace").read()[-6000:] + "\n")


def main():
    for d in ("logs", "results", "images"):
        os.makedirs(os.path.join(W, d), exist_ok=True)
    os.chmod(RESULTS, 0o777)
    only = set(ARGS.only.split(",")) if ARGS.only else None
    try:
        gpus = smi_gpus()
        R["setup"]["gpus"] = gpus
        _, k, _, _ = run(["uname", "-r"])
        R["setup"]["kernel"] = k.strip()
        _, v, _, _ = run([os.path.join(ARGS.criu, "criu"), "--version"])
        R["setup"]["criu"] = v.strip()
        _, v, _, _ = run([f"{ARGS.bin}/containerd", "--version"])
        R["setup"]["containerd_build"] = "containerd v1.7 module of go.mod, built without cri/btrfs/devmapper/zfs/aufs/tracing (pack-container.sh)"
        R["setup"]["containerd"] = v.strip()
        _, v, _, _ = run([f"{ARGS.bin}/runc", "--version"])
        R["setup"]["runc"] = v.strip()
        R["setup"]["driver_root"], R["setup"]["libcuda"] = driver_root()
        write_shim_config("All")
        exe, binds = rootfs_and_mounts()
        save()
        control_plane()
        containerd()
        agent()
        save()
        ctx = {"uuids": [g["uuid"] for g in gpus], "exe": exe, "binds": binds}
        if len(gpus) < 2:
            raise RuntimeError("need 2 GPUs")
        R["pinned_memcpy"] = pinned_memcpy()
        save()
        experiment("0-reference", exp_ref, ctx)
        if not only or "1" in only:
            experiment("1-suspend-resume-in-place", exp1, ctx)
        ok = wait_done("ref", 200)
        ctx["ref"] = read_losses("ref")
        R["experiments"]["0-reference"]["finished"] = ok
        R["experiments"]["0-reference"]["n_steps"] = len(ctx["ref"]["steps"])
        R["experiments"]["0-reference"]["done"] = ctx["ref"]["done"]
        if "1-suspend-resume-in-place" in R["experiments"]:
            R["experiments"]["1-suspend-resume-in-place"]["compare"] = compare("e1", ctx["ref"], ARGS.steps)
        save()
        winner = None
        if not only or "2" in only:
            for mode in ("All", "Assigned", "AllRestricted"):
                res = experiment("2-remap-" + mode, exp2, ctx, mode)
                if res.get("compare", {}).get("identical") and "error" not in res.get("resume", {"error": 1}):
                    winner = winner or mode
        R["remap_winner"] = winner
        if not only or "3" in only:
            experiment("3-checkpoint-restore-other-gpu", exp3, ctx, winner or "All")
            experiment("3b-checkpoint-restore-other-gpu-cgroups-ignore", exp3, ctx, winner or "All", "ignore", "e3b")
    except Exception as e:
        R["errors"].append(f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
        log("ERROR", e)
    finally:
        save()
        try:
            collect_logs()
        except Exception as e:
            log("collect logs", e)
        for name, p in reversed(PROCS):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except Exception:
                pass
        log("end")
    return report()


def report():
    """results.json with the checks, container-results.md from it; 1 when a check failed."""
    R["checks"] = container_checks.checks(R)
    save()
    with open(os.path.join(OUT, "container-results.md"), "w") as f:
        f.write(container_report.render(R) + "\n")
    for c in R["checks"]:
        if not c["ok"]:
            log("FAILED", f"{c['scenario']}: {c['check']}: expected {c['expected']}, measured {c['measured']}")
    ok = container_report.passed(R)
    log("ALL CHECKS PASSED" if ok else "FAILED")
    return 0 if ok else 1


sys.exit(main())
