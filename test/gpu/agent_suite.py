#!/usr/bin/env python3
"""kybernate-agent on real GPUs (run by run-agent.sh once the control plane is up).

1. A Node `gpu-node`, a Pod `default/worker` bound to it (no kubelet: the pod never really
   runs; the agent only needs the object) with kybernate.io/gpus = GPU 0's UUID.
2. torch_worker.py holding --gib GiB on GPU 0, training, placed in the pod's cgroup as the
   kubelet's cgroupfs driver would under cgroup v2: kubepods/besteffort/pod<UID>/<64 hex>.
3. kybernate-agent in real mode (NVML, CUDA driver) for gpu-node.
4. The GPUNode's inventory against nvidia-smi; the Node's kybernate.io/gpu capacity.
5. Suspend and resume twice: over the gRPC socket (agentctl), then through GPUCheckpoint
   objects. Each time: GPU memory, host RSS, pod annotation and Events, checksum and training
   steps after resume.
6. /metrics (kybernate_ lines).

Writes results.json, agent-results.md (rendered from it by agent_report.py; every yes/NO
verdict there is a check) and suite.log (with the worker's lines) under --out, rewritten after
every part so that a run cut short still leaves its figures. Exits 1 when a check failed, a part
broke off or the report could not be rendered; 0 only when every check passed. --dry-run runs
everything that needs no GPU (a stand-in worker without torch) to check the plumbing.
`--report-from results.json` writes the report of an earlier run to stdout (exit status likewise).
"""
import argparse
import datetime
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

import agent_report
import report_common

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1 << 30
MIB = 1 << 20
NS, POD, NODE = "default", "worker", "gpu-node"

ARGS = None
R = {"meta": {}, "inventory": {}, "cycles": [], "errors": [], "steps": []}
T0 = time.time()
LOG = None
CHILDREN = []

# Stand-in for torch_worker.py in --dry-run: same protocol, no GPU.
FAKE_WORKER = r"""
import os, select, sys, time
print(f"READY pid={os.getpid()} bytes=1024 chunks=1 checksum=dry init_s=0 fill_s=0 cycles_per_s=0 device=none", flush=True)
step, t0 = 0, time.time()
while True:
    r, _, _ = select.select([0], [], [], 0.01)
    step += 1
    if r:
        line = sys.stdin.readline()
        if not line or line.startswith("quit"):
            break
        if line.startswith("status"):
            print(f"STATUS step={step} loss=0 t={time.time():.3f}", flush=True)
        elif line.startswith("verify"):
            print("VERIFY ok=1 checksum=dry want=dry ms=0", flush=True)
"""


def log(*parts):
    line = f"[{time.time() - T0:7.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def err(where, e):
    msg = f"{where}: {e}"
    log("ERROR", msg)
    R["errors"].append(msg)


def run(cmd, timeout=60, input=None, check=False):
    """Runs cmd; returns (rc, stdout, stderr). rc is 'timeout' on timeout."""
    try:
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        rc, out, er = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, er = "timeout", e.stdout or "", f"timed out after {timeout}s"
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
    except OSError as e:
        rc, out, er = "oserror", "", str(e)
    if check and rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}: rc={rc}: {er.strip()[-600:]}")
    return rc, out, er


def kubectl(*args, input=None, timeout=60, check=True):
    cmd = [os.path.join(ARGS.bin, "kubectl"), "--kubeconfig", ARGS.kubeconfig,
           "--cache-dir", os.path.join(ARGS.work, "kubectl-cache")] + list(args)
    return run(cmd, timeout=timeout, input=input, check=check)[1]


def kget(*args):
    return json.loads(kubectl("get", *args, "-o", "json"))


def agentctl(*args, timeout=330):
    cmd = [os.path.join(ARGS.bin, "agentctl"), "--socket", ARGS.socket] + list(args)
    rc, out, er = run(cmd, timeout=timeout)
    try:
        j = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        j = {"error": f"rc={rc} stdout={out.strip()[-300:]!r} stderr={er.strip()[-300:]!r}"}
    j["rc"] = rc
    return j


# ----------------------------------------------------------------------------- probes


def smi_gpus():
    """nvidia-smi's view: one dict per GPU (memory in MiB)."""
    if ARGS.dry_run:
        return [{"index": 0, "uuid": "GPU-00000000-0000-0000-0000-000000000000", "name": "dry-run", "memory.total": 0,
                 "memory.used": 0, "driver_version": "-"}]
    q = "index,uuid,name,memory.total,memory.used,driver_version"
    _, out, _ = run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"], timeout=30, check=True)
    rows = []
    for line in out.strip().splitlines():
        c = [x.strip() for x in line.split(",")]
        rows.append({"index": int(c[0]), "uuid": c[1], "name": c[2], "memory.total": int(c[3]),
                     "memory.used": int(c[4]), "driver_version": c[5]})
    return rows


def smi_apps():
    """{pid: (gpu uuid, MiB)} of compute processes."""
    if ARGS.dry_run:
        return {}
    _, out, _ = run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"],
                    timeout=30)
    apps = {}
    for line in out.strip().splitlines():
        c = [x.strip() for x in line.split(",")]
        if len(c) == 3 and c[0].isdigit():
            apps[int(c[0])] = (c[1], int(c[2]) if c[2].isdigit() else None)
    return apps


def nvml_mem():
    """NVML v1 (and v2 where present) memory of GPU 0, as bytes, to explain any difference
    between nvidia-smi's total and the agent's (go-nvml GetMemoryInfo is v1)."""
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        m = pynvml.nvmlDeviceGetMemoryInfo(h)
        out = {"v1_total": m.total, "v1_used": m.used}
        try:
            m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            out.update({"v2_total": m2.total, "v2_used": m2.used, "v2_reserved": m2.reserved})
        except Exception as e:  # noqa: BLE001 - older bindings
            out["v2"] = str(e)
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        out["cuda_driver_version"] = cuda
        return out
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def snapshot(pid):
    gpus = smi_gpus()
    apps = smi_apps()
    return {"t": time.time(), "gpu0_used_mib": gpus[0]["memory.used"], "worker_on_gpu_mib": (apps.get(pid) or (None, None))[1],
            "rss": rss(pid)}


# ---------------------------------------------------------------------------- worker


class Worker:
    """torch_worker.py (or the dry-run stand-in); stdout lines collected by a thread."""

    def __init__(self, uuid):
        env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=uuid)
        if ARGS.dry_run:
            cmd = [sys.executable, "-c", FAKE_WORKER]
        else:
            cmd = [sys.executable, os.path.join(HERE, "torch_worker.py"), "--gib", str(ARGS.gib), "--train"]
        self.lines = queue.Queue()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                  text=True, bufsize=1, start_new_session=True)
        self.pid = self.p.pid
        CHILDREN.append(self.p)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            line = line.rstrip("\n")
            if LOG:
                LOG.write(f"[{time.time() - T0:7.1f}s] worker: {line}\n")
                LOG.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix, timeout):
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"worker: no {prefix} line within {timeout}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"worker exited with {self.p.wait()} before {prefix}")
            if line.startswith(prefix):
                return kv(line)

    def ask(self, cmd, reply, timeout=60):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.wait_for(reply, timeout)

    def status(self):
        return self.ask("status", "STATUS")

    def verify(self):
        return self.ask("verify", "VERIFY", 120)

    def stop(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=15)
        except Exception:  # noqa: BLE001
            pass
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=15)


def kv(line):
    return dict(p.partition("=")[::2] for p in line.split()[1:])


# --------------------------------------------------------------------------- cgroup


def cgroup2_mounts():
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            c = line.split()
            if len(c) > 2 and c[2] == "cgroup2":
                out.append(c[1])
    return sorted(out, key=lambda m: m != "/sys/fs/cgroup")


def place_in_pod_cgroup(pid, uid, cid):
    """Puts pid into <cgroup2>/kubepods/besteffort/pod<uid>/<cid>; returns (how, proc_root,
    created dirs). Falls back to a cgroup2 mounted here, then to a --proc-root whose
    <pid>/cgroup says the same path (and whose meminfo is the host's)."""
    rel = f"kubepods/besteffort/pod{uid}/{cid}"
    mounts = cgroup2_mounts()
    tried = []
    if not mounts:
        mnt = os.path.join(ARGS.work, "cgroup2")
        os.makedirs(mnt, exist_ok=True)
        rc, _, er = run(["mount", "-t", "cgroup2", "none", mnt], timeout=10)
        if rc == 0:
            mounts = [mnt]
        else:
            tried.append(f"mount cgroup2 at {mnt}: {er.strip()}")
    for m in mounts:
        path = os.path.join(m, rel)
        try:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            with open(f"/proc/{pid}/cgroup") as f:
                content = f.read()
            if f"pod{uid}/{cid}" in content:
                dirs = [os.path.join(m, *rel.split("/")[:i]) for i in range(4, 0, -1)]
                line = [l for l in content.splitlines() if f"pod{uid}" in l][0]
                return {"how": f"cgroup v2 at {m}", "path": path, "proc_cgroup": line}, "/proc", dirs
            tried.append(f"{path}: /proc/{pid}/cgroup does not show it: {content.strip()!r}")
        except OSError as e:
            tried.append(f"{path}: {e}")
    # Last resort: the agent reads cgroups from --proc-root; give it one that says the path.
    root = os.path.join(ARGS.work, "proc")
    os.makedirs(os.path.join(root, str(pid)), exist_ok=True)
    with open(os.path.join(root, str(pid), "cgroup"), "w") as f:
        f.write(f"0::/{rel}\n")
    if not os.path.lexists(os.path.join(root, "meminfo")):  # one --proc-root for several workers (agent_bench.py)
        os.symlink("/proc/meminfo", os.path.join(root, "meminfo"))
    return {"how": f"FAKE --proc-root {root} (no writable cgroup2: {'; '.join(tried)})", "path": rel,
            "proc_cgroup": f"0::/{rel}"}, root, []


# ------------------------------------------------------------------------------ parts


def setup_objects(uuid):
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "ServiceAccount",
                                                  "metadata": {"name": "default", "namespace": NS}}))
    labels = {"kubernetes.io/hostname": NODE, "nvidia.com/gpu.present": "true"}
    if ARGS.simulate:  # a node the simulated agent serves: one simulated H100
        labels.update({"type": "kwok", "kybernate.io/gpu-model": "NVIDIA-H100-80GB-HBM3", "kybernate.io/gpu-count": "1"})
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": labels}}
    kubectl("apply", "-f", "-", input=json.dumps(node))
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": POD, "namespace": NS, "annotations": {"kybernate.io/gpus": uuid}},
           "spec": {"nodeName": NODE, "automountServiceAccountToken": False, "restartPolicy": "Never",
                    "containers": [{"name": "torch", "image": "pytorch/pytorch:not-pulled",
                                    "command": ["python3", "test/gpu/torch_worker.py", "--gib", str(ARGS.gib), "--train"]}]}}
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    return kget("pod", "-n", NS, POD)["metadata"]["uid"]


def start_agent(proc_root):
    args = [os.path.join(ARGS.bin, "kybernate-agent"), "--node-name", NODE, "--kubeconfig", ARGS.kubeconfig,
            "--socket", ARGS.socket, "--metrics-bind-address", ARGS.metrics, "--proc-root", proc_root,
            "--host-memory-reserve", "8Gi", "-v=4"] + ARGS.agent_arg
    if ARGS.simulate:
        args += ["--simulate", "--simulate-node-selector", "type=kwok"]
    R["meta"]["agent_cmd"] = " ".join(args[1:])
    f = open(os.path.join(ARGS.work, "logs", "agent.log"), "w")
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    CHILDREN.append(p)
    deadline = time.time() + 60
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"agent exited with {p.returncode}; see agent.log")
        try:
            with urllib.request.urlopen(f"http://{ARGS.metrics}/healthz", timeout=2) as r:
                if r.read() == b"ok" and os.path.exists(ARGS.socket):
                    return p
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("agent not healthy (with its socket) within 60s")


def wait_gpunode(pred, timeout):
    deadline = time.time() + timeout
    gn = None
    while time.time() < deadline:
        try:
            gn = kget("gpunode", NODE)
            if pred(gn):
                return gn, True
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.25)
    return gn, False


def pod_on_gpu(gn, uid, residency):
    for g in gn.get("status", {}).get("gpus", []):
        for p in g.get("pods") or []:
            if p.get("uid") == uid and p.get("residency") == residency:
                return True
    return False


def suspended_listed(gn, uid):
    return any(p.get("uid") == uid for p in gn.get("status", {}).get("suspendedPods") or [])


def simulate_pod():
    """--simulate: the pod gets the simulated GPU's UUID and phase Running (no kubelet), so
    that the simulation gives it a GPU process."""
    gn, ok = wait_gpunode(lambda g: bool(g.get("status", {}).get("gpus")), 30)
    if not ok:
        raise TimeoutError("no simulated GPUs in the GPUNode within 30s")
    uuid = gn["status"]["gpus"][0]["uuid"]
    kubectl("annotate", "--overwrite", "-n", NS, "pod", POD, f"kybernate.io/gpus={uuid}")
    kubectl("patch", "-n", NS, "pod", POD, "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Running"}}')


def inventory(uid, worker_pid):
    inv = R["inventory"]
    gn, ok = wait_gpunode(lambda g: pod_on_gpu(g, uid, "Resident"), 45)
    inv["pod_attributed_in_time"] = ok
    smi = smi_gpus()
    apps = smi_apps()
    inv["nvidia_smi"] = smi
    inv["nvidia_smi_apps"] = {str(k): v for k, v in apps.items()}
    inv["nvml"] = nvml_mem() if not ARGS.dry_run else {}
    inv["gpunode_status"] = (gn or {}).get("status")
    node = kget("node", NODE)
    inv["node_capacity"] = node["status"].get("capacity", {})
    inv["node_allocatable"] = node["status"].get("allocatable", {})
    inv["agentctl_inventory"] = agentctl("inventory", timeout=30)
    dump("gpunode-running.yaml", "gpunode", NODE)
    inv["worker_pid"] = worker_pid
    save()


def checkpoint_object(name, action, uid, timeout=300):
    body = {"apiVersion": "kybernate.io/v1alpha1", "kind": "GPUCheckpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"podName": POD, "podUID": uid, "action": action, "reason": "Manual"}}
    t0 = time.time()
    kubectl("create", "-f", "-", input=json.dumps(body))
    deadline = t0 + timeout
    ck = {}
    while time.time() < deadline:
        ck = kget("gpucheckpoint", "-n", NS, name)
        phase = ck.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        if phase in (None, "", "Pending") and time.time() - t0 > 30:
            break  # no agent took it up
        time.sleep(0.1)
    st = ck.get("status", {})
    steps = [{"name": s["name"], "duration": s["duration"], "bytes": s.get("bytes", 0)} for s in st.get("steps") or []]
    out = {"phase": st.get("phase"), "bytes": st.get("bytesMoved", 0), "steps": steps, "message": st.get("message"),
           "wall_s": round(time.time() - t0, 3), "gpus": st.get("gpus"), "status": st}
    if st.get("phase") != "Succeeded":
        out["error"] = f"GPUCheckpoint {name} phase {st.get('phase')}: {st.get('message')}"
    return out


def grpc_call(action, uid):
    j = agentctl(action, f"{NS}/{POD}", uid)
    if "error" in j:
        return {"error": f"agentctl {action}: {j}", "raw": j}
    res = j["response"].get("result") or {}
    return {"bytes": int(res.get("bytes", 0)), "wall_s": round(j["wall_s"], 3), "gpus": res.get("gpus"),
            "steps": [{"name": s["name"], "duration": s.get("duration"), "bytes": int(s.get("bytes", 0))} for s in res.get("steps") or []],
            "raw": j}


def pod_state():
    p = kget("pod", "-n", NS, POD)
    cond = [c for c in p.get("status", {}).get("conditions") or [] if c["type"] == "kybernate.io/GPUResident"]
    return {"state": p["metadata"].get("annotations", {}).get("kybernate.io/state"),
            "gpus": p["metadata"].get("annotations", {}).get("kybernate.io/gpus"),
            "gpu_resident": (cond[0]["status"] + "/" + cond[0].get("reason", "")) if cond else None}


def cycle(label, via, w, uid, n):
    c = {"label": label, "via": via}
    R["cycles"].append(c)
    try:
        c["status_before"] = w.status()
        c["before"] = snapshot(w.pid)
        c["pod_before"] = pod_state()
        if via == "grpc":
            c["suspend"] = grpc_call("suspend", uid)
        else:
            c["suspend"] = checkpoint_object(f"worker-suspend-{n}", "Suspend", uid)
        if c["suspend"].get("error"):
            raise RuntimeError(c["suspend"]["error"])
        time.sleep(0.5)  # let NVML settle
        c["suspended"] = snapshot(w.pid)
        c["pod_suspended"] = pod_state()
        gn, ok = wait_gpunode(lambda g: suspended_listed(g, uid), 10)
        c["gpunode_suspended_listed"] = ok
        c["gpunode_suspended"] = {k: (gn or {}).get("status", {}).get(k) for k in ("suspendedPods", "hostMemory")}
        c["gpunode_suspended"]["gpu0_pods"] = ((gn or {}).get("status", {}).get("gpus") or [{}])[0].get("pods")
        c["agentctl_inventory_suspended"] = agentctl("inventory", timeout=30)
        dump(f"gpunode-suspended-{n}.yaml", "gpunode", NODE)
        time.sleep(1.0)
        if via == "grpc":
            c["resume"] = grpc_call("resume", uid)
        else:
            c["resume"] = checkpoint_object(f"worker-resume-{n}", "Resume", uid)
        if c["resume"].get("error"):
            raise RuntimeError(c["resume"]["error"])
        c["status_after"] = w.status()
        time.sleep(0.5)
        c["status_later"] = w.status()
        c["verify"] = w.verify()
        c["after"] = snapshot(w.pid)
        c["pod_after"] = pod_state()
        gn, ok = wait_gpunode(lambda g: pod_on_gpu(g, uid, "Resident") and not suspended_listed(g, uid), 15)
        c["gpunode_resident_again"] = ok
    except Exception as e:  # noqa: BLE001
        err(f"cycle {label}", e)
        c["error"] = str(e)
    save()


def dump(fname, *args):
    try:
        text = kubectl("get", *args, "-o", "yaml")
    except Exception as e:  # noqa: BLE001
        text = f"# {e}\n"
    with open(os.path.join(ARGS.out, fname), "w") as f:
        f.write(text)


def events():
    ev = kget("events", "-n", NS, "--field-selector", f"involvedObject.name={POD}")
    out = []
    for e in sorted(ev.get("items", []), key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or ""):
        out.append({"type": e.get("type"), "reason": e.get("reason"), "count": e.get("count"),
                    "source": e.get("source", {}), "reportingController": e.get("reportingComponent"),
                    "message": e.get("message")})
    R["events"] = out


def scrape_metrics():
    with urllib.request.urlopen(f"http://{ARGS.metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    R["metrics"] = [l for l in text.splitlines() if l.startswith("kybernate_")]
    with open(os.path.join(ARGS.out, "metrics.txt"), "w") as f:
        f.write("\n".join(R["metrics"]) + "\n")


def save():
    R["meta"]["duration_s"] = round(time.time() - T0, 1)
    with open(os.path.join(ARGS.out, "results.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    try:
        text = agent_report.render(R)
    except Exception as e:  # noqa: BLE001 - never lose the json for a report bug
        text = f"report failed: {e}\n{traceback.format_exc()}"
    with open(os.path.join(ARGS.out, "agent-results.md"), "w") as f:
        f.write(text)


def step(name, fn, *a):
    t = time.time()
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001
        err(name, f"{e}\n{traceback.format_exc()[-1500:]}")
        return None
    finally:
        R["steps"].append({"step": name, "s": round(time.time() - t, 2)})
        log("step", name, f"{time.time() - t:.1f}s")


def meta():
    m = R["meta"]
    m["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    m["host"] = f"{os.cpu_count()} CPUs, {platform.machine()}"
    m["kernel"] = platform.release()
    m["python"] = platform.python_version()
    if not ARGS.dry_run:
        g = smi_gpus()
        m["gpu"] = ", ".join(f"{x['name']} ({x['uuid']})" for x in g)
        m["driver"] = g[0]["driver_version"]
        _, out, _ = run([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"], timeout=60)
        m["torch"] = out.strip()
    else:
        m["gpu"] = "none (dry run)"
    _, v, _ = run([os.path.join(ARGS.bin, "kube-apiserver"), "--version"])
    m["control_plane"] = f"etcd + {v.strip()} on 127.0.0.1, no kubelet, no controller-manager (the pod never runs)"
    m["auth"] = ("INSECURE test setup: throwaway CA, agent and kubectl use one client cert in system:masters "
                 "(not the agent's RBAC from manifests/agent)")


def main():
    global ARGS, LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--kubeconfig")
    ap.add_argument("--work")
    ap.add_argument("--out")
    ap.add_argument("--report-from", metavar="RESULTS_JSON", help="only write the report of an earlier run to stdout")
    ap.add_argument("--gib", type=float, default=8)
    ap.add_argument("--socket", default="/tmp/kyb-agent.sock")
    ap.add_argument("--agent-arg", action="append", default=[], help="an extra kybernate-agent flag (repeatable)")
    ap.add_argument("--metrics", default="127.0.0.1:9464")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: a stand-in worker without torch")
    ap.add_argument("--simulate", action="store_true", help="with --dry-run: the agent in --simulate mode, to check the "
                    "suspend/resume plumbing (agentctl, GPUCheckpoint) without a GPU")
    ARGS = ap.parse_args()
    if ARGS.report_from:
        R.update(report_common.load(ARGS.report_from))
        sys.stdout.write(agent_report.render(R))
        return 0
    if not all((ARGS.bin, ARGS.kubeconfig, ARGS.work, ARGS.out)):
        ap.error("--bin, --kubeconfig, --work and --out are required for a run")
    ARGS.dry_run = ARGS.dry_run or ARGS.simulate
    R["meta"]["dry_run"] = ARGS.dry_run
    os.makedirs(ARGS.out, exist_ok=True)
    os.makedirs(os.path.join(ARGS.work, "logs"), exist_ok=True)
    LOG = open(os.path.join(ARGS.out, "suite.log"), "w")
    w, agent, dirs = None, None, []

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        step("meta", meta)
        g0 = smi_gpus()[0]
        uuid = g0["uuid"]
        R["meta"]["gpu0_used_before_worker_mib"] = g0["memory.used"]
        uid = step("objects", setup_objects, uuid)
        if not uid:
            return 1
        R["meta"]["pod_uid"] = uid
        w = Worker(uuid)
        cid = os.urandom(32).hex()
        placed = step("cgroup", place_in_pod_cgroup, w.pid, uid, cid)
        if not placed:
            return 1
        cg, proc_root, dirs = placed
        R["meta"]["cgroup"] = f"{cg['how']}: worker in {cg['path']}; /proc/PID/cgroup: `{cg['proc_cgroup']}`"
        log("cgroup", R["meta"]["cgroup"])
        ready = step("worker", w.wait_for, "READY", 180)
        if not ready:
            return 1
        R["meta"]["worker"] = (f"torch_worker.py --gib {ARGS.gib} --train on GPU 0, pid {w.pid}, {int(ready['bytes'])} tensor bytes, "
                               f"checksum {ready['checksum']}, init {ready['init_s']} s, fill {ready['fill_s']} s")
        agent = step("agent start", start_agent, proc_root)
        if not agent:
            return 1
        if ARGS.simulate:
            step("simulate: pod on the simulated GPU", simulate_pod)
        step("inventory", inventory, uid, w.pid)
        step("cycle grpc", cycle, "1: gRPC Suspend/Resume (agentctl)", "grpc", w, uid, 1)
        step("cycle gpucheckpoint", cycle, "2: GPUCheckpoint Suspend/Resume (kubectl)", "gpucheckpoint", w, uid, 2)
        step("metrics", scrape_metrics)
        time.sleep(1)  # the event broadcaster writes asynchronously
        step("events", events)
        dump("pod.yaml", "pod", "-n", NS, POD)
        dump("gpucheckpoints.yaml", "gpucheckpoints", "-n", NS)
        R["gpucheckpoints_table"] = kubectl("get", "gpucheckpoints", "-n", NS, "-o", "wide", check=False)
        return 1 if R["errors"] else 0
    except KeyboardInterrupt as e:
        err("suite", f"interrupted: {e}")
        return 1
    finally:
        if agent and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)  # marks the GPUNode AgentStopped
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
        if w:
            w.stop()
        for p in CHILDREN:
            if p.poll() is None:
                p.kill()
        for d in dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass
        try:
            R["gpunode_after_agent_stop"] = kget("gpunode", NODE).get("status", {}).get("conditions")
        except Exception as e:  # noqa: BLE001
            R["gpunode_after_agent_stop"] = str(e)
        save()
        log("done", f"{time.time() - T0:.1f}s", "errors:", len(R["errors"]))


def verdict():
    """0 only when the report renders and every one of its checks passed (each failure logged)."""
    try:
        cs = agent_report.checks(R)
    except Exception as e:  # noqa: BLE001 - a report that cannot be rendered fails the run
        print(f"FAILED: the report could not be rendered: {e}", file=sys.stderr)
        return 1
    for c in cs:
        if not c["ok"]:
            print(f"FAILED {c['scenario']}: {c['check']}: expected {c['expected']}, measured {c['measured']}",
                  file=sys.stderr)
    print(report_common.verdict_line(cs, R.get("errors")).replace("**", ""), file=sys.stderr)
    return 0 if report_common.passed(cs, R.get("errors")) else 1


if __name__ == "__main__":
    rc = main()
    sys.exit(rc or verdict())
