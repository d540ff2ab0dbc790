#!/usr/bin/env python3
"""GPU bench of kybernate-agent (issue 22, items 1, 2, 3 and 6), run by run-agent-bench.sh once the
control plane is up (the same setup as agent_suite.py: no kubelet, PyTorch processes in pod cgroups).

Phases, in order of what the goals need (each skipped, and said so, when the --deadline would not
hold it):
1. variant a: the agent without a THP window on the host's default settings: suspend and resume
   over gRPC of PyTorch processes holding --sizes GiB (checksummed).
2. variant b: the agent with --thp-window, same processes; then k = --k concurrent suspends of
   --k-gib processes on one GPU (aggregate GB/s, whether all calls were in flight at once).
3. the agent without window again: gRPC against the raw driver call (cuda-test) on the 8 GiB
   process, --cycles each, interleaved; the 1 GiB restore split into the driver's part and the
   agent's per-call work (item 6); k concurrent suspends without window.
4. variant c: the node in THP `always` (written by the bench), the agent without window.
5. variant b2: the window with defrag = --defrag-variant, when time is left.
For each suspend: the target's minor faults, CPU time and AnonHugePages, /proc/vmstat's THP counters
and khugepaged's, and (on the largest size) a bystander process's huge pages during the checkpoint.

Writes results.json and bench-results.md (bench_report.py, from the JSON only) to --out after every
phase; exits 1 when a check failed, a phase broke off or was skipped. The THP settings are put back
to what they were at start whatever happens (run-agent-bench.sh does it again). --dry-run: the agent
in --simulate mode on a fake THP folder, stand-in workers without torch, no raw driver path.
`--report-from results.json` renders an earlier run."""
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

import agent_suite as S
import bench_host as H
import bench_report
import report_common

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1 << 30
NS, NODE = "default", "gpu-node"
R = {"meta": {}, "thp": {}, "variants": {}, "concurrency": {}, "overhead": {}, "restore_1gib": {}, "agents": [],
     "skipped": [], "errors": [], "steps": []}
ARGS = None
T0 = time.time()
THP = None
LOG = None


def log(*parts):
    line = f"[{time.time() - T0:7.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def err(where, e):
    log("ERROR", where, e)
    R["errors"].append(f"{where}: {e}")


def left():
    return ARGS.deadline_at - time.time()


def fits(what, seconds, optional=False):
    """True when seconds more fit before the deadline (keeping the reserve for cleanup). A skipped
    phase fails the run unless it is optional (then it is only noted)."""
    if left() - ARGS.reserve >= seconds:
        return True
    where = R.setdefault("skipped_optional", []) if optional else R["skipped"]
    where.append(f"{what}: needs ~{seconds:.0f} s, {max(left() - ARGS.reserve, 0):.0f} s left before the deadline")
    log("SKIP", where[-1])
    return False


def est(gib, n=1):
    """Seconds for n suspend+resume cycles of gib GiB at pessimistic rates, with per-call slack."""
    return n * (gib * GIB / 1.6e9 + gib * GIB / 4e9 + 3)


# ---------------------------------------------------------------------------- workers and pods


class Worker(S.Worker):
    """torch_worker.py --gib G (no training: the bench measures moves, not a busy GPU)."""

    def __init__(self, name, gib, uuid):
        self.name, self.gib = name, gib
        env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=uuid)
        cmd = [sys.executable, "-c", S.FAKE_WORKER] if ARGS.dry_run else \
            [sys.executable, os.path.join(HERE, "torch_worker.py"), "--gib", str(gib), "--seed", str(abs(hash(name)) % 1000)]
        self.lines = queue.Queue()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                  text=True, bufsize=1, start_new_session=True)
        self.pid = self.p.pid
        S.CHILDREN.append(self.p)
        threading.Thread(target=self._read, daemon=True).start()


def make_pod(name, gib, uuid):
    ann = {"kybernate.io/gpus": uuid}
    if ARGS.dry_run:
        ann["kybernate.io/gpu-memory"] = f"{int(gib * 1024)}Mi"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "annotations": ann},
           "spec": {"nodeName": NODE, "automountServiceAccountToken": False, "restartPolicy": "Never",
                    "containers": [{"name": "torch", "image": "pytorch/pytorch:not-pulled"}]}}
    S.kubectl("apply", "-f", "-", input=json.dumps(pod))
    if ARGS.dry_run:  # the simulation gives Running pods a simulated process
        S.kubectl("patch", "-n", NS, "pod", name, "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Running"}}')
    return S.kget("pod", "-n", NS, name)["metadata"]["uid"]


def setup(uuid):
    """The Node, one pod and one worker per process the phases use; returns {name: worker}."""
    S.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NS}}))
    labels = {"kubernetes.io/hostname": NODE, "nvidia.com/gpu.present": "true"}
    if ARGS.dry_run:
        labels.update({"type": "kwok", "kybernate.io/gpu-model": "NVIDIA-H100-80GB-HBM3", "kybernate.io/gpu-count": "1"})
    S.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": labels}}))
    want = {f"v{g:g}": g for g in ARGS.sizes}
    want.update({f"k{i}": ARGS.k_gib for i in range(max(ARGS.k))})
    want["r1"] = ARGS.restore_gib
    workers = {}
    for name, gib in want.items():
        w = Worker(name, gib, uuid)
        uid = make_pod(name, gib, uuid)
        if not ARGS.dry_run:
            cg, proc_root, dirs = S.place_in_pod_cgroup(w.pid, uid, os.urandom(32).hex())
            R["meta"].setdefault("cgroups", []).append(f"{name}: {cg['how']}: {cg['path']}")
            R["meta"]["proc_root"] = proc_root
            CGROUP_DIRS.extend(dirs)
        workers[name] = w
    for name, w in workers.items():
        ready = w.wait_for("READY", 240)
        w.tensor_bytes = int(ready["bytes"])
        R["meta"].setdefault("workers", {})[name] = {"gib": w.gib, "pid": w.pid, "tensor_bytes": w.tensor_bytes, "init_s": ready.get("init_s"),
                                                     "fill_s": ready.get("fill_s")}
    return workers


CGROUP_DIRS = []


# ------------------------------------------------------------------------------------- agent


class Agent:
    def __init__(self, label, flags):
        self.label, self.flags = label, flags
        args = [os.path.join(ARGS.bin, "kybernate-agent"), "--node-name", NODE, "--kubeconfig", ARGS.kubeconfig,
                "--socket", ARGS.socket, "--metrics-bind-address", ARGS.metrics, "--proc-root", R["meta"].get("proc_root", "/proc"),
                "--host-memory-reserve", "8Gi", "--state-dir", os.path.join(ARGS.work, "agent-state"), "--thp-dir", THP.dir,
                "-v=2"] + flags + ARGS.agent_arg
        if ARGS.dry_run:
            args += ["--simulate", "--simulate-node-selector", "type=kwok"]
        self.info = {"label": label, "cmd": " ".join(args[1:])}
        R["agents"].append(self.info)
        self.log_path = os.path.join(ARGS.out, f"agent-{len(R['agents'])}-{label}.log")
        logf = open(self.log_path, "w")
        t = time.time()
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        S.CHILDREN.append(self.p)
        while time.time() - t < 60:
            if self.p.poll() is not None:
                raise RuntimeError(f"agent {label} exited with {self.p.returncode}; see its log")
            try:
                with urllib.request.urlopen(f"http://{ARGS.metrics}/healthz", timeout=2) as r:
                    if r.read() == b"ok" and os.path.exists(ARGS.socket):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError(f"agent {label} not healthy within 60s")
        self.info["start_s"] = round(time.time() - t, 2)
        AGENT[0] = self
        if ARGS.dry_run:
            wait_simulated()
        log("agent", label, "up in", self.info["start_s"], "s")

    def stop(self):
        try:
            with urllib.request.urlopen(f"http://{ARGS.metrics}/metrics", timeout=5) as r:
                self.info["metrics"] = [l for l in r.read().decode().splitlines() if l.startswith("kybernate_agent_thp_") or
                                        l.startswith("kybernate_agent_operation_failures_total") and not l.endswith(" 0")]
        except OSError as e:
            self.info["metrics"] = [f"scrape failed: {e}"]
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)


def wait_simulated():
    """--dry-run: the simulated GPU's UUID onto the pods, so that the simulation gives each a process."""
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            gpus = S.kget("gpunode", NODE).get("status", {}).get("gpus") or []
            if gpus:
                break
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError("no simulated GPU in the GPUNode within 30s")
    uuid = gpus[0]["uuid"]
    for name in WORKERS:
        S.kubectl("annotate", "--overwrite", "-n", NS, "pod", name, f"kybernate.io/gpus={uuid}")
    time.sleep(1.5)  # the simulation creates the processes on the pod events


WORKERS = {}
AGENT = [None]  # the agent running now


def engine_s(name, action, log_path=None):
    """The engine's own duration of the pod's last suspend or resume, from the agent's log line
    ("Suspended pod" / "Resumed pod" ... duration=): the gRPC call less it is the API and gRPC work."""
    word = {"suspend": '"Suspended pod"', "resume": '"Resumed pod"'}[action]
    try:
        with open(log_path or AGENT[0].log_path) as f:
            lines = [l for l in f if word in l and f'pod="{NS}/{name}"' in l]
    except (OSError, AttributeError):
        return None
    if not lines or "duration=" not in lines[-1]:
        return None
    return bench_report.dur_s(lines[-1].rsplit("duration=", 1)[1].split()[0].strip('"'))


def engine_end(name, action, log_path=None):
    """When the engine finished the pod's last suspend or resume: the klog time of day of its line,
    in seconds (comparable with other lines of the same log only)."""
    word = {"suspend": '"Suspended pod"', "resume": '"Resumed pod"'}[action]
    try:
        with open(log_path or AGENT[0].log_path) as f:
            lines = [l for l in f if word in l and f'pod="{NS}/{name}"' in l]
        h, m, sec = lines[-1].split()[1].split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (OSError, AttributeError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------------- operations


def grpc(action, name):
    """One agent call over gRPC (agentctl): client wall, the agent's steps and bytes, epoch start/end."""
    t0 = time.time()
    j = S.agentctl(action, f"{NS}/{name}", timeout=max(30, int(left())))
    t1 = time.time()
    if "error" in j:
        raise RuntimeError(f"agentctl {action} {name}: {j}")
    res = j["response"].get("result") or {}
    steps = {s["name"]: bench_report.dur_s(s.get("duration")) for s in res.get("steps") or []}
    return {"path": "grpc", "bytes": int(res.get("bytes", 0)), "call_s": round(j["wall_s"], 4), "process_s": round(t1 - t0, 4),
            "steps_s": steps, "engine_s": engine_s(name, action), "engine_end": engine_end(name, action), "t0": t0, "t1": t1}


def raw(action, w):
    """The driver call without the agent: cuda-test suspend/resume --pid (a fresh process: cuInit included in process_s)."""
    if ARGS.dry_run:
        raise RuntimeError("no raw driver path in a dry run")
    t0 = time.time()
    rc, out, er = S.run([os.path.join(ARGS.bin, "cuda-test"), action, "--pid", str(w.pid), "--json"], timeout=max(30, int(left())))
    t1 = time.time()
    res = raw_result(action, rc, out, er)
    res.update(process_s=round(t1 - t0, 4), t0=t0, t1=t1)
    return res


def raw_result(action, rc, out, er):
    """cuda-test's JSON lines -> the call (the driver's steps as cuda-test timed them, total_ms)."""
    recs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    last = next((r for r in reversed(recs) if r.get("event") == action), {})
    if rc != 0 or not last.get("ok") or last.get("total_ms") is None:
        raise RuntimeError(f"cuda-test {action}: rc={rc} {er.strip()[-400:]} {last}")
    ms = {k: float(last[k]) for k in ("lock_ms", "checkpoint_ms", "restore_ms", "unlock_ms") if last.get(k) is not None}
    steps = {n.split("_")[0].capitalize(): v / 1000 for n, v in ms.items()}
    return {"path": "raw", "call_s": round(float(last["total_ms"]) / 1000, 4), "steps_s": steps, "state": last.get("state")}


def move(via, action, w):
    return grpc(action, w.name) if via == "grpc" else raw(action, w)


def cycle(w, via="grpc", bystander=None, window=False):
    """Suspend and resume w once, with the target's and the node's counters around each."""
    c = {"worker": w.name, "gib": w.gib, "via": via}
    p0, v0, k0 = H.proc(w.pid), H.vmstat(), THP.khugepaged()
    sampler = H.Sampler(THP)
    probe = None
    if bystander:
        probe = threading.Thread(target=probe_bystander, args=(bystander, sampler, window, c), daemon=True)
        probe.start()
    try:
        c["suspend"] = move(via, "suspend", w)
    finally:
        if probe:
            probe.join(timeout=30)
        c["thp_during_suspend"] = sampler.stop()
    c["thp_after_suspend"] = THP.read("enabled")
    p1, v1, k1 = H.proc(w.pid), H.vmstat(), THP.khugepaged()
    c["target_suspend"] = {k: (p1[k] - p0[k]) if None not in (p0[k], p1[k]) else None for k in ("minflt", "majflt", "cpu_s")}
    c["parked"] = {"rss": p1["rss"], "anon_huge": p1["anon_huge"]}
    c["vmstat_suspend"], c["khugepaged_suspend"] = H.delta(v0, v1), H.delta(k0, k1)
    time.sleep(ARGS.settle)
    c["resume"] = move(via, "resume", w)
    p2, v2 = H.proc(w.pid), H.vmstat()
    c["target_resume"] = {k: (p2[k] - p1[k]) if None not in (p1[k], p2[k]) else None for k in ("minflt", "majflt", "cpu_s")}
    c["vmstat_resume"] = H.delta(v1, v2)
    c["verify"] = w.verify()
    if c["verify"].get("ok") != "1":
        raise RuntimeError(f"{w.name}: checksum after resume {c['verify']}")
    return c


def probe_bystander(b, sampler, window, c):
    """While the checkpoint runs: a bystander maps --bystander-mib and reports its huge pages."""
    if window:
        c["window_seen_open"] = sampler.wait_for("always", 5)
    else:
        time.sleep(0.5)
    c["bystander"] = b.alloc(ARGS.bystander_mib)
    c["bystander"]["enabled_then"] = THP.read("enabled")
    c["bystander"]["suspend_still_running"] = "suspend" not in c


# -------------------------------------------------------------------------------------- phases


def variant(key, what, bystander):
    """Suspend/resume cycles of the --sizes workers under the running agent and host settings."""
    out = R["variants"].setdefault(key, {"what": what, "thp": THP.settings(), "cycles": []})
    for g in ARGS.sizes:
        for i in range(ARGS.cycles_per_size.get(g, 1)):
            if not fits(f"variant {key}, {g:g} GiB, cycle {i + 1}", est(g)):
                return
            big = g == max(ARGS.sizes) and i == 0
            out["cycles"].append(cycle(WORKERS[f"v{g:g}"], bystander=bystander if big else None, window=key.startswith("b")))
            save()


def concurrency(key):
    """k pods suspended at once over gRPC (one GPU), then resumed at once."""
    out = R["concurrency"].setdefault(key, {"thp": THP.settings(), "runs": []})
    for k in ARGS.k:
        if not fits(f"concurrency {key}, k={k}", est(k * ARGS.k_gib) + 5):
            return
        ws = [WORKERS[f"k{i}"] for i in range(k)]
        run = {"k": k, "gib_each": ARGS.k_gib}
        for action in ("suspend", "resume"):
            calls, errs = [None] * k, []
            barrier = threading.Barrier(k)

            def one(i):
                barrier.wait()
                try:
                    calls[i] = grpc(action, ws[i].name)
                except Exception as e:  # noqa: BLE001
                    errs.append(str(e))
            ts = [threading.Thread(target=one, args=(i,)) for i in range(k)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if errs:
                raise RuntimeError(f"concurrency k={k} {action}: {errs}")
            run[action] = calls
            time.sleep(ARGS.settle)
        run["verify"] = [w.verify() for w in ws]
        if any(v.get("ok") != "1" for v in run["verify"]):
            raise RuntimeError(f"concurrency k={k}: checksum after resume {run['verify']}")
        out["runs"].append(run)
        save()


def paths(i):
    """Both paths, the order alternating per cycle; gRPC only in a dry run (no driver)."""
    if ARGS.dry_run:
        if "raw driver path: not in a dry run" not in R["skipped"]:
            R["skipped"].append("raw driver path: not in a dry run")
        return ("grpc",)
    return ("raw", "grpc") if i % 2 == 0 else ("grpc", "raw")


def overhead():
    """gRPC against the raw driver call on one process, interleaved (the order alternates per cycle)."""
    w = WORKERS[f"v{ARGS.overhead_gib:g}"]
    out = R["overhead"] = {"worker": w.name, "gib": w.gib, "cycles": []}
    for i in range(ARGS.cycles):
        if not fits(f"overhead cycle {i + 1}", 2 * est(w.gib)):
            return
        for via in paths(i):
            out["cycles"].append(cycle(w, via))
        save()


def restore_1gib():
    """Item 6: suspend/resume of the 1 GiB pod through the agent and raw, the resume split into its parts."""
    w = WORKERS["r1"]
    out = R["restore_1gib"] = {"worker": w.name, "gib": w.gib, "cycles": []}
    for i in range(ARGS.restore_cycles):
        if not fits(f"1 GiB restore cycle {i + 1}", 2 * est(w.gib)):
            return
        for via in paths(i):
            out["cycles"].append(cycle(w, via))
        save()


# ---------------------------------------------------------------------------------------- main


def phase(name, fn, *a):
    t = time.time()
    log("phase", name, f"({left():.0f} s left)")
    try:
        return fn(*a)
    except Deadline:
        raise
    except Exception as e:  # noqa: BLE001
        err(name, f"{e}\n{traceback.format_exc()[-1200:]}")
        return None
    finally:
        R["steps"].append({"step": name, "s": round(time.time() - t, 2)})
        save()


def with_agent(label, flags, *phases):
    """Starts the agent with flags, runs the phases, stops it."""
    if not fits(f"agent {label}", 10):
        return
    agent = phase(f"agent {label} start", Agent, label, flags)
    if agent is None:
        return
    try:
        for name, fn, *a in phases:
            phase(name, fn, *a)
    finally:
        agent.stop()


def node_always(fn):
    """Runs fn with the node in THP always (variant c), then puts the setting back."""
    before = THP.read("enabled")
    THP.write("enabled", "always")
    try:
        fn()
    finally:
        THP.write("enabled", before)


def run_phases(bystander):
    with_agent("a-default", [], ("variant a", variant, "a", "host default (agent without window)", bystander))
    with_agent("b-window", ["--thp-window"], ("variant b", variant, "b", "agent's THP window (--thp-window)", bystander),
               ("concurrency b", concurrency, "b"))
    with_agent("a-default-2", [], ("overhead", overhead), ("restore 1 GiB", restore_1gib), ("concurrency a", concurrency, "a"))
    if fits("variant c", sum(est(g) for g in ARGS.sizes) + 10):
        node_always(lambda: with_agent("c-node-always", [], ("variant c", variant, "c", "node-wide THP always (reference)", bystander)))
    if ARGS.defrag_variant and fits("variant b2 (optional)", sum(est(g) for g in ARGS.sizes) + 10, optional=True):
        with_agent("b2-window-defrag", ["--thp-window", f"--thp-window-defrag={ARGS.defrag_variant}"],
                   ("variant b2", variant, "b2", f"THP window with defrag={ARGS.defrag_variant}", bystander))


class Deadline(Exception):
    pass


def on_alarm(signum, _frame):
    raise Deadline(f"signal {signum}: the --deadline is near")


def meta():
    m = R["meta"]
    m["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    m["host"] = f"{os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}"
    m["command"] = " ".join(sys.argv[1:])
    m["deadline_s"] = round(ARGS.deadline_at - T0, 1)
    m["dry_run"] = ARGS.dry_run
    if ARGS.dry_run:
        m["gpu"] = "none (dry run: agent --simulate, fake THP folder, stand-in workers)"
        return
    g = S.smi_gpus()
    m["gpu"] = ", ".join(f"{x['name']} ({x['uuid']})" for x in g)
    m["driver"] = g[0]["driver_version"]
    _, out, _ = S.run(["nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader"], timeout=20)
    m["persistence_mode"] = out.strip()
    _, out, _ = S.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"], timeout=60)
    m["torch"] = out.strip()
    with open("/proc/meminfo") as f:
        m["mem_total_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)


def save():
    R["meta"]["duration_s"] = round(time.time() - T0, 1)
    with open(os.path.join(ARGS.out, "results.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    try:
        text = bench_report.render(R)
    except Exception as e:  # noqa: BLE001 - never lose the JSON for a report bug
        text = f"report failed: {e}\n{traceback.format_exc()}"
    with open(os.path.join(ARGS.out, "bench-results.md"), "w") as f:
        f.write(text)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--kubeconfig")
    ap.add_argument("--work")
    ap.add_argument("--out")
    ap.add_argument("--report-from", metavar="RESULTS_JSON")
    ap.add_argument("--deadline", type=float, default=330, help="seconds from $BENCH_T0 (run-agent-bench.sh's start) or from now")
    ap.add_argument("--reserve", type=float, default=25, help="seconds kept for stopping everything and the report")
    ap.add_argument("--sizes", default="8,32", help="GiB of the variant processes")
    ap.add_argument("--cycles-per-size", default="8=2,32=1", help="suspend/resume cycles per size and variant (GIB=N,...; default 1)")
    ap.add_argument("--k", default="1,2,4", help="concurrent suspends")
    ap.add_argument("--k-gib", type=float, default=4)
    ap.add_argument("--overhead-gib", type=float, default=8, help="which --sizes process the gRPC/raw comparison uses")
    ap.add_argument("--cycles", type=int, default=5, help="gRPC and raw cycles each")
    ap.add_argument("--restore-gib", type=float, default=1)
    ap.add_argument("--restore-cycles", type=int, default=3)
    ap.add_argument("--bystander-mib", type=int, default=512)
    ap.add_argument("--defrag-variant", default="always", help="defrag in variant b2 (empty: no b2)")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds between a suspend and its resume")
    ap.add_argument("--thp-dir", default=H.THP_DIR)
    ap.add_argument("--socket", default="/tmp/kyb-bench-agent.sock")
    ap.add_argument("--metrics", default="127.0.0.1:9465")
    ap.add_argument("--agent-arg", action="append", default=[])
    ap.add_argument("--dry-run", action="store_true", help="no GPU: agent --simulate, a fake THP folder, stand-in workers")
    a = ap.parse_args()
    if a.report_from:
        return a
    if not all((a.bin, a.kubeconfig, a.work, a.out)):
        ap.error("--bin, --kubeconfig, --work and --out are required for a run")
    a.sizes = [float(x) for x in a.sizes.split(",")]
    a.k = [int(x) for x in a.k.split(",")]
    a.cycles_per_size = {float(k): int(v) for k, v in (p.split("=") for p in a.cycles_per_size.split(",") if p)}
    if a.overhead_gib not in a.sizes:
        ap.error("--overhead-gib must be one of --sizes")
    a.deadline_at = float(os.environ.get("BENCH_T0", T0)) + a.deadline
    a.simulate = a.dry_run
    return a


def main():
    global ARGS, THP, LOG
    ARGS = parse_args()
    if ARGS.report_from:
        R.update(report_common.load(ARGS.report_from))
        sys.stdout.write(bench_report.render(R))
        return 0 if report_common.passed(bench_report.checks(R), R.get("errors")) else 1
    S.ARGS = ARGS  # agent_suite's helpers read bin, kubeconfig, work, socket, dry_run
    os.makedirs(ARGS.out, exist_ok=True)
    os.makedirs(os.path.join(ARGS.work, "logs"), exist_ok=True)
    LOG = open(os.path.join(ARGS.out, "bench.log"), "w")
    THP = H.THP.make_fake(os.path.join(ARGS.work, "fake-thp")) if ARGS.dry_run else H.THP(ARGS.thp_dir)
    original = {n: THP.read(n) for n in ("enabled", "defrag")}
    R["thp"] = {"dir": THP.dir, "fake": THP.fake, "original": original, "settings_at_start": THP.settings()}
    signal.signal(signal.SIGTERM, on_alarm)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(left() - 20)))  # stopping the agent and the workers, THP and the report take < 15 s
    bystander = None
    try:
        phase("meta", meta)
        uuid = S.smi_gpus()[0]["uuid"]
        if phase("workers", lambda: WORKERS.update(setup(uuid))) is None and not WORKERS:
            return 1
        bystander = H.Bystander()
        run_phases(bystander)
    except Deadline as e:
        err("bench", f"stopped: {e}")
    finally:
        signal.alarm(0)
        for p in S.CHILDREN:
            if p.poll() is None:
                p.kill()
        for p in S.CHILDREN:
            try:
                p.wait(timeout=5)  # out of their cgroups before those are removed
            except subprocess.TimeoutExpired:
                pass
        if bystander:
            bystander.stop()
        for n, v in original.items():
            if v and THP.read(n) != v:
                try:
                    THP.write(n, v)
                except OSError as e:
                    err("restoring THP", e)
        R["thp"]["at_end"] = {n: THP.read(n) for n in ("enabled", "defrag")}
        for d in sorted(set(CGROUP_DIRS), key=lambda d: -d.count("/")):  # deepest first: the shared parents last
            try:
                os.rmdir(d)
            except OSError:
                pass
        save()
        log("done", f"{time.time() - T0:.1f}s", "errors:", len(R["errors"]), "skipped:", len(R["skipped"]))
    return 0


def verdict():
    try:
        cs = bench_report.checks(R)
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: the report could not be rendered: {e}", file=sys.stderr)
        return 1
    for c in cs:
        if not c["ok"]:
            print(f"FAILED {c['scenario']}: {c['check']}: expected {c['expected']}, measured {c['measured']}", file=sys.stderr)
    print(report_common.verdict_line(cs, R.get("errors")).replace("**", ""), file=sys.stderr)
    return 0 if report_common.passed(cs, R.get("errors")) and not R.get("skipped") else 1


if __name__ == "__main__":
    rc = main()
    sys.exit(rc or verdict())
