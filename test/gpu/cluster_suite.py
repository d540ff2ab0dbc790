#!/usr/bin/env python3
"""The whole system on one GPU node (issue 19): a control plane, one real kubelet node with
containerd's CRI and the `kybernate` runtime handler served by our shim, kybernate-agent with
the real driver and kybernate-scheduler, installed with `kubectl apply -k`, driving PyTorch pods
(train.py). Started by run-cluster.sh (the lent GPU machine, from what pack-cluster.sh carried)
or by hack/demo.sh on a GPU machine with Go.

Scenarios (cluster_scenarios.py), each an automated check:
  1 preemption by suspension          2 the same with kube-scheduler's default preemption (a Job)
  3 time slicing of three pods         4 agent SIGKILL while pods are suspended
  5 deleting a suspended pod returns its host memory
  7 scale to zero: cold start vs wake from suspension through kybernate-activator
    (cluster_wake.py; not in the default list: --scenarios 7)
  8 storage tiers: a suspended pod with GPUs spilled to disk by the agent's policy and restored
    (cluster_tiers.py; not in the default list: --scenarios 8)
  9 the same image moved on to object storage (SeaweedFS, carried by test/gpu/pack-weed.sh in a
    call just before) and restored from there (cluster_tiers.py; --scenarios 9, run it last: it
    rolls the agent out with the object store)

Everything measured goes to $OUT/results.json as it comes; at the end cluster_report.py writes
$OUT/results.md from it. The exit status is 1 when any check failed (or the run broke off), 0
only when every check passed.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_images  # noqa: E402
import cluster_node  # noqa: E402
import cluster_report  # noqa: E402
import cluster_scenarios  # noqa: E402
import cluster_tiers  # noqa: E402
import cluster_wake  # noqa: E402

AP = argparse.ArgumentParser()
AP.add_argument("--bin", required=True, help="folder with every program (kyb's links, containerd, runc, pause)")
AP.add_argument("--pki", required=True)
AP.add_argument("--repo", required=True, help="folder with manifests/ and test/gpu/")
AP.add_argument("--work", default="/tmp/kyb")
AP.add_argument("--out", required=True)
AP.add_argument("--python", default="python3", help="the Python with PyTorch the pods run (host tree)")
AP.add_argument("--deadline", type=float, default=540, help="seconds; then the run stops and reports")
AP.add_argument("--scenarios", default="1,2,4,6,3", help="6 (restore guard) runs inside 4; 7 (scale to zero) on its own")
AP.add_argument("--wake-sizes", default="8,32", help="GiB of weights of scenario 7's model servers")
AP.add_argument("--quantum", default="12s")
AP.add_argument("--factor", default="3")
AP.add_argument("--keep", action="store_true", help="leave the cluster running")
AP.add_argument("--simulate-agent", action="store_true",
                help="rehearsal without a GPU: the agent simulates the node's GPUs (the scenarios still need a real one)")
ARGS = AP.parse_args()
WAKE = "7" in ARGS.scenarios.split(",")
cluster_wake.SIZES = tuple(int(x) for x in ARGS.wake_sizes.split(","))
RUN = dict(cluster_scenarios.RUN, **{"7": cluster_wake.s7, "8": cluster_tiers.s8, "9": cluster_tiers.s9})

T0 = time.time()
OUT = ARGS.out
os.makedirs(OUT, exist_ok=True)
LOGF = open(os.path.join(OUT, "suite.log"), "a", buffering=1)
R = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "setup": {}, "scenarios": {}, "checks": [],
     "errors": [], "nvml": {}}


def log(*a):
    line = f"[{time.time() - T0:6.1f}s] " + " ".join(str(x) for x in a)
    print(line, flush=True)
    LOGF.write(line + "\n")


def save():
    tmp = os.path.join(OUT, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(R, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(OUT, "results.json"))


def check(scenario, name, ok, detail=""):
    R["checks"].append({"scenario": scenario, "check": name, "ok": bool(ok), "detail": detail})
    log(("PASS" if ok else "FAIL"), f"[{scenario}] {name}: {detail}")
    save()
    return ok


def remaining():
    return ARGS.deadline - (time.time() - T0)


# --------------------------------------------------------------------------- GPU facts
def gpus():
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        return [], str(e)
    if p.returncode != 0:
        return [], p.stderr.strip() or p.stdout.strip()
    out = []
    for line in p.stdout.strip().splitlines():
        i, uuid, name, mem, drv = [x.strip() for x in line.split(",")]
        out.append({"index": int(i), "uuid": uuid, "name": name, "memory_bytes": int(mem) << 20, "driver": drv})
    return out, ""


class Sampler(threading.Thread):
    """NVML every 0.25 s: memory used, utilization and the compute processes of GPU 0."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stop, self.error = [], False, None

    def run(self):
        try:
            import pynvml
            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            while not self.stop:
                t = time.time()
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                procs = [(p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
                self.samples.append({"t": t, "used": mem.used, "util": util.gpu, "procs": procs})
                time.sleep(max(0.0, 0.25 - (time.time() - t)))
        except Exception as e:  # noqa: BLE001 - reported as a failed check by whoever needs the samples
            self.error = f"{type(e).__name__}: {e}"

    def between(self, t0, t1):
        return [s for s in self.samples if t0 <= s["t"] <= t1]


class Recorder(threading.Thread):
    """Watches one list (pods or GPUCheckpoints of the test namespace) from the start and keeps
    every event with the local time it arrived: the history the checks audit at the end."""

    def __init__(self, node, path, what):
        super().__init__(daemon=True)
        self.node, self.path, self.what = node, path, what
        self.events, self.latest, self.errors, self.stop = [], {}, [], False
        self.cond = threading.Condition()

    def run(self):
        rv = ""
        while not self.stop:
            try:
                if not rv:
                    lst = self.node.api("GET", self.path)
                    rv = lst["metadata"]["resourceVersion"]
                    with self.cond:
                        for o in lst.get("items", []):
                            self._add("LISTED", o)
                url = f"{cluster_node.API}{self.path}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=300"
                with urllib.request.urlopen(url, context=self.node.ssl, timeout=330) as r:
                    for line in r:
                        if self.stop:
                            return
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":
                            self.errors.append(f"{self.what}: watch error {ev['object'].get('message')}")
                            rv = ""
                            break
                        rv = ev["object"]["metadata"].get("resourceVersion", rv)
                        if ev["type"] == "BOOKMARK":
                            continue
                        with self.cond:
                            self._add(ev["type"], ev["object"])
            except Exception as e:  # noqa: BLE001 - recorded; the checks fail on recorder errors
                if self.stop:
                    return
                self.errors.append(f"{self.what}: {type(e).__name__}: {e}")
                time.sleep(0.5)

    def _add(self, typ, o):
        name = o["metadata"]["name"]
        self.events.append({"t": time.time(), "type": typ, "name": name, "obj": o})
        if typ == "DELETED":
            self.latest.pop(name, None)
        else:
            self.latest[name] = o
        self.cond.notify_all()

    def wait_for(self, pred, timeout, what):
        """Waits until PRED(latest) is true (re-evaluated on every event and every 0.5 s)."""
        end = time.time() + min(timeout, max(1.0, remaining()))
        with self.cond:
            while True:
                v = pred(self.latest)
                if v:
                    return v
                left = end - time.time()
                if left <= 0:
                    raise TimeoutError(f"{what}: not within {timeout:.0f}s")
                self.cond.wait(min(left, 0.5))


# ------------------------------------------------------------------------- host memory
def grow_host_memory(need):
    """Some lent machines (Firecracker) start with a small MemTotal that grows as memory is used:
    a suspend that parks NEED bytes would be refused for lack of host memory. A helper touches
    that much once (in the background, during the bring-up) and frees it again."""
    def meminfo(key):
        for line in open("/proc/meminfo"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    total = meminfo("MemTotal")
    R["setup"]["memtotal_gib_at_start"] = round(total / 2**30, 1)
    if total >= need + (24 << 30):
        return None
    code = ("import numpy as np, sys; n = int(sys.argv[1]); c = 4 << 30; "
            "keep = [np.ones(min(c, n - i), dtype=np.uint8) for i in range(0, n, c)]; print(len(keep))")
    f = open(os.path.join(ARGS.work, "logs", "grow-memory.log"), "w")
    log(f"MemTotal {total / 2**30:.1f} GiB: touching {need / 2**30:.0f} GiB once so that it grows")
    return subprocess.Popen([ARGS.python, "-c", code, str(need)], stdout=f, stderr=subprocess.STDOUT)


# --------------------------------------------------------------------------- references
def start_references(work, python, seeds):
    """Uninterrupted runs of train.py on the host, one per (seed, steps), in the background."""
    os.makedirs(f"{work}/ref", exist_ok=True)
    train = os.path.join(ARGS.repo, "test", "gpu", "train.py")
    script = " && ".join(
        f"SEED={s} STEPS={n} PACE=0 BALLAST_GIB=0.0625 LOSSES={work}/ref/{s}.jsonl {python} {train}"
        for s, n in seeds)
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    f = open(f"{work}/logs/references.log", "w")
    return subprocess.Popen(["bash", "-c", script], stdout=f, stderr=subprocess.STDOUT, env=env)


# ----------------------------------------------------------------------------- setup
def setup(node, gpu):
    s = R["setup"]
    s["machine"] = {"kernel": os.uname().release, "cpus": os.cpu_count(),
                    "mem_gib": round(int(open("/proc/meminfo").readline().split()[1]) / 2**20, 1),
                    "cgroup": cluster_node.fstype("/sys/fs/cgroup")}
    driver_root, libdir = cluster_node.driver_paths()
    s["driver"] = {"root": driver_root, "libdir": libdir}
    build = os.path.join(ARGS.repo, "BUILD")
    s["build"] = open(build).read().strip() if os.path.exists(build) else None
    s["quantum"], s["factor"] = ARGS.quantum, ARGS.factor
    s["agent_flags"] = cluster_node.AGENT_FLAGS
    if gpu and not libdir:
        raise RuntimeError("no folder with libcuda.so.1 and libnvidia-ml.so.1 found (ldconfig -p)")
    node.control_plane()
    log("control plane up")
    s["snapshotter"] = node.containerd(driver_root or "/")
    imgdir = node.p("image-tars")
    os.makedirs(imgdir, exist_ok=True)
    kyb = os.path.realpath(os.path.join(node.bin, "kybernate-agent"))
    tars = [cluster_images.pause_image(imgdir, os.path.join(node.bin, "pause")),
            cluster_images.go_image(imgdir, "kybernate-agent", kyb,
                                    cluster_images.driver_deps(libdir) if libdir else ()),
            cluster_images.go_image(imgdir, "kybernate-scheduler", kyb, links=["kybernate-activator"]),
            cluster_images.host_python_image(imgdir)]
    node.import_images(s["snapshotter"], tars)
    node.kubelet()
    log("node Ready")
    s["agent_simulated"] = ARGS.simulate_agent
    node.install(libdir or "/usr/lib", ARGS.quantum, ARGS.factor, simulate=ARGS.simulate_agent,
                 extra=cluster_wake.overlay if WAKE else None)
    node.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster_scenarios.NS}})
    t = time.time()

    def up():
        sched = node.api("GET", "/apis/apps/v1/namespaces/kybernate-system/deployments/kybernate-scheduler", ok404=True)
        ds = node.api("GET", "/apis/apps/v1/namespaces/kybernate-system/daemonsets/kybernate-agent", ok404=True)
        return (sched and sched.get("status", {}).get("readyReplicas") == 1 and ds and
                ds.get("status", {}).get("numberReady") == 1)
    try:
        node.wait(up, min(120, remaining()), "kybernate-scheduler and kybernate-agent Ready")
    finally:
        s["pods"] = node.kubectl("get", "pods", "-A", "-o", "wide", check=False)
    s["components_ready_s"] = round(time.time() - t, 1)
    log(f"kybernate-scheduler and kybernate-agent Ready {s['components_ready_s']}s after kubectl apply")
    if gpu:
        try:
            gn = node.wait(lambda: gpunode_ready(node), 60, "GPUNode Ready")
        except TimeoutError as e:
            gn = node.api("GET", f"/apis/kybernate.io/v1alpha1/gpunodes/{cluster_node.NODE}", ok404=True) or {}
            conds = [(c["type"], c["status"], c.get("reason"), c.get("message"))
                     for c in gn.get("status", {}).get("conditions", [])]
            raise TimeoutError(f"{e}; its conditions: {conds}") from None
        s["gpunode"] = gn.get("status", {})
        alloc = node.api("GET", f"/api/v1/nodes/{cluster_node.NODE}")["status"]["allocatable"]
        s["allocatable_kybernate_gpu"] = alloc.get("kybernate.io/gpu")


def smoke(node, binds, python, gpu):
    """A pod under our shim (no GPU) runs the host's Python from the image host-python."""
    c = cluster_scenarios.Ctx(node=node, binds=binds, python=python, work=ARGS.work)
    pod = cluster_scenarios.gpu_pod(c, "smoke", "kybernate-batch-low", 0, 0, 0, 0, "smoke", scheduler="default-scheduler")
    spec = pod["spec"]["containers"][0]
    del spec["resources"], pod["metadata"]["annotations"]["kybernate.io/gpu-memory"]
    spec["command"] = [python, "-c", "import sys; print('python', sys.version.split()[0])" +
                       ("; import torch; print('torch', torch.__version__)" if gpu else "")]
    node.api("POST", f"/api/v1/namespaces/{cluster_scenarios.NS}/pods", pod)
    t = time.time()

    def done():
        p = node.api("GET", f"/api/v1/namespaces/{cluster_scenarios.NS}/pods/smoke")
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None
    try:
        p = node.wait(done, min(90, remaining()), "smoke pod done")
        log_ = node.kubectl("logs", "-n", cluster_scenarios.NS, "smoke", check=False, timeout=20).strip()
        check("setup", "a pod with RuntimeClass kybernate runs the host's Python (image host-python + hostPath mounts)",
              p["status"]["phase"] == "Succeeded", f"{log_!r} in {time.time() - t:.1f}s; {cluster_scenarios.pod_why(p)[:300]}")
    finally:
        node.api("DELETE", f"/api/v1/namespaces/{cluster_scenarios.NS}/pods/smoke?gracePeriodSeconds=0", ok404=True)


def wake_rehearsal(node, binds, python, weights):
    """No GPU: scenario 7's activator and CPU model server (cluster_wake.rehearse), with recorders."""
    recs = [Recorder(node, f"/api/v1/namespaces/{cluster_scenarios.NS}/pods", "pods"),
            Recorder(node, f"/apis/kybernate.io/v1alpha1/namespaces/{cluster_scenarios.NS}/gpucheckpoints", "gpucheckpoints")]
    for r in recs:
        r.start()
    ctx = cluster_scenarios.Ctx(node=node, gpu=None, pods=recs[0], cps=recs[1], sampler=None, binds=binds, python=python,
                                R=R, log=log, check=check, save=save, remaining=remaining, refs=None, work=ARGS.work,
                                scenarios=["7"], weights=weights)
    try:
        cluster_wake.rehearse(ctx)
    except Exception as e:  # noqa: BLE001 - reported; the run fails at "no GPU" next
        check("s7", "rehearsal completed", False, f"{type(e).__name__}: {e}")
        R["errors"].append(traceback.format_exc())
    finally:
        for r in recs:
            r.stop = True


def store_rehearsal(node):
    """No GPU: scenario 9's object store setup (cluster_tiers.rehearse)."""
    ctx = cluster_scenarios.Ctx(node=node, gpu=None, R=R, log=log, check=check, save=save, remaining=remaining, work=ARGS.work)
    try:
        cluster_tiers.rehearse(ctx)
    except Exception as e:  # noqa: BLE001 - reported; the run fails at "no GPU" next
        check("s9", "rehearsal completed", False, f"{type(e).__name__}: {e}")
        R["errors"].append(traceback.format_exc())


def gpunode_ready(node):
    gn = node.api("GET", f"/apis/kybernate.io/v1alpha1/gpunodes/{cluster_node.NODE}", ok404=True)
    if gn and any(c["type"] == "Ready" and c["status"] == "True" for c in gn.get("status", {}).get("conditions", [])):
        return gn
    return None


def collect_logs(node):
    """The components' logs, the pods' logs and the recorded history go to $OUT (8 files at most
    come back from the GPU machine: one tarball)."""
    import tarfile
    with tarfile.open(os.path.join(OUT, "logs.tar.xz"), "w:xz") as t:
        for d in (node.p("logs"), node.p("node", "pod-logs"), node.p("results"), node.p("ref")):
            if os.path.isdir(d):
                t.add(d, arcname=os.path.basename(d) if d != node.p("node", "pod-logs") else "pod-logs")


def main():
    node = None
    sampler = None
    recs = []
    try:
        gl, why = gpus()
        R["setup"]["gpus"] = gl
        gpu = gl[0] if gl else None
        if not gpu:
            check("setup", "an NVIDIA GPU is present (nvidia-smi)", False, why or "no GPU listed")
        node = cluster_node.Node(ARGS.bin, ARGS.pki, ARGS.repo, ARGS.work, log)
        refs = grow = None
        if gpu:
            sampler = Sampler()
            sampler.start()
            if {"1", "3", "4", "8", "9"} & set(ARGS.scenarios.split(",")):
                refs = start_references(ARGS.work, ARGS.python, cluster_scenarios.REFERENCES)
            grow = grow_host_memory(int(0.62 * gpu["memory_bytes"]))
        weights = cluster_wake.prepare(ARGS.work, ARGS.python, ARGS.repo, bool(gpu), log) if WAKE else None
        binds, py = cluster_images.host_mounts(ARGS.python, torch=bool(gpu))
        R["setup"]["python"], R["setup"]["host_mounts"] = py, binds
        setup(node, gpu)
        if gpu and grow:
            grow.wait()
            R["setup"]["memtotal_gib_after_growing"] = round(int(open("/proc/meminfo").readline().split()[1]) / 2**20, 1)
        check("setup", "control plane, node, kybernate-scheduler and kybernate-agent up (kubectl apply -k)", True,
              f"agent and scheduler Ready {R['setup']['components_ready_s']}s after apply")
        smoke(node, binds, py["python"], bool(gpu))
        if not gpu and WAKE:
            wake_rehearsal(node, binds, py["python"], weights)
        if not gpu and "9" in ARGS.scenarios.split(","):
            store_rehearsal(node)
        if not gpu:
            raise RuntimeError("no GPU: the scenarios need one (the setup above ran without it)")
        pods = Recorder(node, f"/api/v1/namespaces/{cluster_scenarios.NS}/pods", "pods")
        cps = Recorder(node, f"/apis/kybernate.io/v1alpha1/namespaces/{cluster_scenarios.NS}/gpucheckpoints", "gpucheckpoints")
        recs = [pods, cps]
        for r in recs:
            r.start()
        ctx = cluster_scenarios.Ctx(node=node, gpu=gpu, pods=pods, cps=cps, sampler=sampler, binds=binds,
                                    python=py["python"], R=R, log=log, check=check, save=save, remaining=remaining,
                                    refs=refs, work=ARGS.work, scenarios=ARGS.scenarios.split(","), weights=weights)
        for sc in ARGS.scenarios.split(","):
            if sc not in RUN:
                continue
            if remaining() < 30:
                check(f"s{sc}", "ran", False, "no time left before the deadline")
                continue
            try:
                RUN[sc](ctx)
            except Exception as e:  # noqa: BLE001 - one scenario's failure does not stop the others
                check(f"s{sc}", "completed", False, f"{type(e).__name__}: {e}")
                R["errors"].append(traceback.format_exc())
                cluster_scenarios.cleanup(ctx)
            save()
        for r in recs:
            check("audit", f"the {r.what} watch saw no error", not r.errors, "; ".join(r.errors[:5]))
    except Exception as e:  # noqa: BLE001 - reported, the run fails
        R["errors"].append(traceback.format_exc())
        check("run", "ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        for r in recs:
            r.stop = True
        if sampler:
            sampler.stop = True
            R["nvml"]["error"] = sampler.error
            R["nvml"]["samples"] = len(sampler.samples)
        R["duration_s"] = round(time.time() - T0, 1)
        if node:
            try:
                R["setup"]["final_pods"] = node.kubectl("get", "pods", "-A", "-o", "wide", check=False, timeout=15)
                ev = node.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False, timeout=15)
                R["setup"]["events"] = "\n".join(ev.splitlines()[-200:])
            except Exception as e:  # noqa: BLE001
                R["setup"]["final_pods"] = str(e)
        save()
        if node:
            try:
                collect_logs(node)
            except Exception as e:  # noqa: BLE001
                R["errors"].append(f"logs: {e}")
        if sampler and sampler.samples:
            with open(os.path.join(OUT, "nvml.json"), "w") as f:
                json.dump(sampler.samples, f)
        ok = bool(R["checks"]) and all(c["ok"] for c in R["checks"])
        R["passed"] = ok
        save()
        with open(os.path.join(OUT, "results.md"), "w") as f:
            # Rendered from the file, not from R: the report is then exactly what
            # `cluster_report.py results.json` renders (key order included).
            with open(os.path.join(OUT, "results.json")) as j:
                f.write(cluster_report.render(json.load(j)))
        log("ALL CHECKS PASSED" if ok else f"FAILED: {sum(not c['ok'] for c in R['checks'])} of {len(R['checks'])} checks")
        if node and not ARGS.keep:
            node.stop()
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
