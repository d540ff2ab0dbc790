"""The scenarios of cluster_suite.py. Each creates PyTorch pods (train.py in the image
host-python, the host's Python tree mounted read-only), measures, and records checks.

Timing figures come from three clocks that agree on this one machine: the local time each
watch event arrived (Recorder), the step lines the pods write (time.time() in the pod) and
NVML samples. Suspend and resume durations are the agent's own (GPUCheckpoint status.steps).
"""
import os
import re
import signal
import subprocess
import time

import losses

NS = "gpu-test"
GIB = 1 << 30
# The node's pods live below the kubelet's cgroupRoot (cluster_node.CGROUP_ROOT).
CGROUP_MARK = "/kybernate-gpu/"
# (seed, steps) of the uninterrupted reference runs started before the cluster comes up.
S1_SEED, S1_STEPS = 11, 900
S4_SEED, S4_STEPS = 41, 900
S3_SEEDS, S3_REF_STEPS = (31, 32, 33), 4000
S8_SEED, S8_STEPS = 81, 900
REFERENCES = [(S1_SEED, S1_STEPS), (S4_SEED, S4_STEPS), (S8_SEED, S8_STEPS)] + [(s, S3_REF_STEPS) for s in S3_SEEDS]


class Ctx:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.created = []


# ------------------------------------------------------------------------------ helpers
def gpu_pod(ctx, name, prio, declared, ballast_gib, steps, seed, scenario, scheduler="kybernate-scheduler",
            gpus=None, limit=1, pace=0.02, start_file=None, labels=None, restart="Never"):
    env = {"SEED": str(seed), "STEPS": str(steps), "PACE": str(pace), "BALLAST_GIB": f"{ballast_gib:.4f}",
           "LOSSES": "/results/$(POD_NAME).jsonl", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1",
           "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    if start_file:
        env["START_FILE"] = f"/results/{start_file}"
    mounts = [{"name": f"host{i}", "mountPath": b, "readOnly": True} for i, b in enumerate(ctx.binds)]
    vols = [{"name": f"host{i}", "hostPath": {"path": b, "type": "Directory"}} for i, b in enumerate(ctx.binds)]
    mounts += [{"name": "work", "mountPath": "/work", "readOnly": True}, {"name": "results", "mountPath": "/results"}]
    vols += [{"name": "work", "hostPath": {"path": os.path.join(ctx.node.repo, "test", "gpu"), "type": "Directory"}},
             {"name": "results", "hostPath": {"path": os.path.join(ctx.work, "results", scenario), "type": "DirectoryOrCreate"}}]
    ann = {"kybernate.io/gpu-memory": f"{declared >> 20}Mi"}
    if gpus:
        ann["kybernate.io/gpus"] = gpus
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": ann, "labels": dict(labels or {}, scenario=scenario)},
        "spec": {
            "schedulerName": scheduler, "runtimeClassName": "kybernate", "priorityClassName": prio,
            "restartPolicy": restart, "hostNetwork": True, "enableServiceLinks": False,
            "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "train", "image": "docker.io/kybernate/host-python:dev", "imagePullPolicy": "Never",
                "command": [ctx.python, "/work/train.py"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}] +
                       [{"name": k, "value": v} for k, v in env.items()],
                "volumeMounts": mounts, "resources": {"limits": {"kybernate.io/gpu": str(limit)}}}],
            "volumes": vols}}


def create(ctx, obj, plural="pods", group="/api/v1"):
    t = time.time()
    ctx.node.api("POST", f"{group}/namespaces/{NS}/{plural}", obj)
    ctx.created.append((group, plural, obj["metadata"]["name"]))
    ctx.log(f"created {plural}/{obj['metadata']['name']}")
    return t


def delete(ctx, name, plural="pods", group="/api/v1", grace=None):
    q = f"?gracePeriodSeconds={grace}" if grace is not None else ""
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    ctx.node.api("DELETE", f"{group}/namespaces/{NS}/{plural}/{name}{q}", body, ok404=True)


def cleanup(ctx):
    """Deletes what the scenario created and waits until its pods are gone."""
    for group, plural, name in reversed(ctx.created):
        try:
            delete(ctx, name, plural, group, grace=0 if plural == "pods" else None)
        except Exception as e:  # noqa: BLE001
            ctx.log(f"cleanup {plural}/{name}: {e}")
    ctx.created = []
    try:
        ctx.pods.wait_for(lambda l: not l, 60, "the scenario's pods gone")
    except TimeoutError as e:
        ctx.log(str(e))


def phase(o):
    return (o or {}).get("status", {}).get("phase")


def state(o):
    return (o or {}).get("metadata", {}).get("annotations", {}).get("kybernate.io/state", "")


def running(o):
    """Running with its container started."""
    cs = (o or {}).get("status", {}).get("containerStatuses") or []
    return phase(o) == "Running" and cs and cs[0].get("state", {}).get("running")


def first_event(rec, name, pred, after=0.0):
    for e in rec.events:
        if e["name"] == name and e["t"] >= after and pred(e["obj"]):
            return e
    return None


def steps_file(ctx, scenario, pod):
    return os.path.join(ctx.work, "results", scenario, pod + ".jsonl")


def wait_steps(ctx, scenario, pod, n, timeout, pods_rec=None):
    """Waits until POD has written N steps; fails early when the pod failed."""
    end = time.time() + min(timeout, max(1, ctx.remaining()))
    while time.time() < end:
        r = losses.read(steps_file(ctx, scenario, pod))
        if len(r["steps"]) >= n:
            return r
        o = ctx.pods.latest.get(pod)
        if phase(o) in ("Failed", "Succeeded"):
            raise RuntimeError(f"pod {pod} {phase(o)} after {len(r['steps'])} steps: {pod_why(o)}")
        time.sleep(0.2)
    raise TimeoutError(f"pod {pod}: {n} steps not within {timeout}s ({pod_why(ctx.pods.latest.get(pod))})")


def pod_why(o):
    if not o:
        return "no such pod"
    st = o.get("status", {})
    conds = [f"{c['type']}={c['status']}:{c.get('message', '')[:200]}" for c in st.get("conditions", [])]
    cs = [c.get("state") for c in st.get("containerStatuses") or []]
    return f"phase {st.get('phase')}, state {state(o)!r}, conditions {conds}, containers {cs}"


DUR = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|ns|m|s)")


def seconds(d):
    """A Go duration string (1m2.5s, 350ms) in seconds."""
    mult = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(v) * mult[u] for v, u in DUR.findall(d or ""))


def checkpoints(ctx, pod, action=None):
    """Every GPUCheckpoint of POD ever seen (from the history), latest state of each, in creation order."""
    seen = {}
    for e in ctx.cps.events:
        o = e["obj"]
        if o["spec"].get("podName") == pod and (action is None or o["spec"].get("action") == action):
            seen[o["metadata"]["name"]] = dict(o, _first=seen.get(o["metadata"]["name"], {}).get("_first", e["t"]), _last=e["t"])
    return sorted(seen.values(), key=lambda o: o["_first"])


def moved(cp):
    """{"s": total of the agent's steps, "bytes", "gbps", "steps": {name: s}} of one GPUCheckpoint."""
    st = cp.get("status", {})
    steps = {s["name"]: round(seconds(s["duration"]), 3) for s in st.get("steps") or []}
    total = sum(steps.values())
    b = st.get("bytesMoved") or 0
    return {"name": cp["metadata"]["name"], "reason": cp["spec"].get("reason"), "phase": st.get("phase"),
            "s": round(total, 3), "bytes": b, "gbps": round(b / total / 1e9, 2) if total else None, "steps": steps,
            "message": st.get("message", "")[:300]}


def wait_cp(ctx, pod, action, timeout, after=0.0, retryable=()):
    """Waits for a GPUCheckpoint of POD with ACTION to succeed (fails at once when one failed,
    unless its message names one of RETRYABLE)."""
    def done(_):
        for cp in checkpoints(ctx, pod, action):
            if cp["_first"] < after:
                continue
            ph = cp.get("status", {}).get("phase")
            if ph == "Failed" and any(r in str(cp.get("status")) for r in retryable):
                continue
            if ph == "Failed":
                raise RuntimeError(f"{action} of {pod} failed: {cp['status'].get('message')}")
            if ph == "Succeeded":
                return cp
        return None
    return ctx.cps.wait_for(done, timeout, f"{action} of {pod} succeeded")


def host_pid(pod):
    """The host PID of the train.py process of POD (by its environment)."""
    want = f"POD_NAME={pod}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if b"train.py" not in open(f"/proc/{d}/cmdline", "rb").read():
                continue
            if want in open(f"/proc/{d}/environ", "rb").read().split(b"\0"):
                return int(d)
        except OSError:
            continue
    return None


def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    except OSError:
        return None
    return None


def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) << 10
    return None


def ref(ctx, seed, steps):
    """The reference losses of SEED (waits for the background runs)."""
    path = os.path.join(ctx.work, "ref", f"{seed}.jsonl")
    end = time.time() + min(240, max(1, ctx.remaining()))
    while time.time() < end:
        r = losses.read(path)
        if len(r["steps"]) >= steps and r["done"]:
            return losses.reference_losses(path)
        if ctx.refs.poll() not in (None, 0):
            raise RuntimeError(f"the reference runs failed (rc {ctx.refs.returncode}); see logs/references.log")
        time.sleep(0.5)
    raise TimeoutError(f"reference of seed {seed}: not ready")


def report_losses(ctx, sc, what, path, reference, want_done=True):
    c = losses.check(path, reference, want_done=want_done)
    ctx.R["scenarios"][sc].setdefault("losses", {})[what] = c
    ctx.check(sc, f"{what}: one process started once (same PID and token), every step once, losses bit-identical "
                  f"to the uninterrupted run" + (", ballast checksum intact" if want_done else ""),
              not c["failures"], "; ".join(c["failures"]) or
              f"{c['steps_written']} steps, pid {c['pids']}, token {c['tokens']}, start {c['starts']}, "
              f"{c['compared']} losses compared")
    return c


# ---------------------------------------------------------------------------- scenario 1
def s1(ctx):
    """Preemption by suspension: a low-priority pod holds >= 60% of the GPU; a high-priority pod
    that does not fit arrives."""
    sc, M = "s1", ctx.gpu["memory_bytes"]
    R = ctx.R["scenarios"].setdefault(sc, {"title": "Preemption by suspension"})
    reference = ref(ctx, S1_SEED, S1_STEPS)
    vb, pb = 0.60 * M / GIB, 0.30 * M / GIB
    R["victim"] = {"ballast_gib": round(vb, 1), "declared_gib": round(0.66 * M / GIB, 1), "steps": S1_STEPS}
    R["preemptor"] = {"ballast_gib": round(pb, 1), "declared_gib": round(0.45 * M / GIB, 1)}
    create(ctx, gpu_pod(ctx, "victim", "kybernate-batch-low", int(0.66 * M), vb, S1_STEPS, S1_SEED, sc, start_file="victim.starts"))
    wait_steps(ctx, sc, "victim", 150, 180)
    used = [s["used"] for s in ctx.sampler.samples[-8:]]
    R["victim"]["nvml_used_gib_running"] = round(max(used) / GIB, 1) if used else None
    ctx.check(sc, "the victim holds >= 60% of the GPU's memory (NVML)", used and max(used) >= 0.6 * M,
              f"{max(used) / GIB:.1f} of {M / GIB:.1f} GiB" if used else "no NVML sample")
    t_create = create(ctx, gpu_pod(ctx, "preemptor", "kybernate-interactive-high", int(0.45 * M), pb, 300, 99, sc))
    run_ev = ctx.pods.wait_for(lambda l: running(l.get("preemptor")), 180, "preemptor Running")
    t_run = first_event(ctx.pods, "preemptor", running)["t"]
    sus = wait_cp(ctx, "victim", "Suspend", 60)
    m = moved(sus)
    R["suspend"] = m
    R["preemptor"]["time_to_running_s"] = round(t_run - t_create, 2)
    ctx.check(sc, "the victim is suspended (GPUCheckpoint Suspend, reason Preemption), not deleted",
              m["phase"] == "Succeeded" and m["reason"] == "Preemption" and "victim" in ctx.pods.latest,
              f"{m['s']} s, {m['bytes'] / 1e9:.1f} GB, {m['gbps']} GB/s")
    ctx.check(sc, "the preemptor is Running within the victim's measured suspend + 2 s",
              t_run - t_create <= m["s"] + 2.0, f"{t_run - t_create:.2f} s from creation to Running; suspend {m['s']} s")
    # NVML while suspended: between the suspend's end and the preemptor's first step.
    pre = wait_steps(ctx, sc, "preemptor", 1, 120)
    t_first = pre["steps"][0]["t"]
    win = ctx.sampler.between(sus["_last"], t_first)
    vpid = host_pid("victim")
    R["victim"]["host_pid"] = vpid
    low = min((s["used"] for s in win), default=None)
    R["nvml_used_gib_suspended"] = round(low / GIB, 2) if low is not None else None
    ctx.check(sc, "NVML shows the victim's memory freed while it is suspended",
              low is not None and low < 0.1 * M and all(vpid not in [p for p, _ in s["procs"]] for s in win),
              f"GPU used {low / GIB:.2f} GiB, victim pid {vpid} not among compute processes ({len(win)} samples)"
              if low is not None else "no NVML sample between the suspend and the preemptor's first step")
    ctx.pods.wait_for(lambda l: phase(l.get("preemptor")) in ("Succeeded", "Failed"), 120, "preemptor done")
    ctx.check(sc, "the preemptor completed", phase(ctx.pods.latest.get("preemptor")) == "Succeeded",
              pod_why(ctx.pods.latest.get("preemptor")))
    res = wait_cp(ctx, "victim", "Resume", 120)
    R["resume"] = moved(res)
    ctx.pods.wait_for(lambda l: phase(l.get("victim")) in ("Succeeded", "Failed"), 180, "victim done")
    ctx.check(sc, "the victim resumed and completed", phase(ctx.pods.latest.get("victim")) == "Succeeded",
              pod_why(ctx.pods.latest.get("victim")))
    c = report_losses(ctx, sc, "victim", steps_file(ctx, sc, "victim"), reference)
    R["steps_lost"] = 0 if not c["failures"] else None
    audit_no_restart(ctx, sc, "victim")
    cleanup(ctx)


def audit_no_restart(ctx, sc, pod):
    """The whole history of POD: never deleted, its container never restarted."""
    evs = [e for e in ctx.pods.events if e["name"] == pod]
    restarts = max([cs.get("restartCount", 0) for e in evs for cs in e["obj"]["status"].get("containerStatuses") or []], default=0)
    deleted = [e for e in evs if e["type"] == "DELETED" or e["obj"]["metadata"].get("deletionTimestamp")]
    states = []
    for e in evs:
        s = state(e["obj"])
        if not states or states[-1] != s:
            states.append(s)
    ctx.R["scenarios"][sc].setdefault("history", {})[pod] = states
    ctx.check(sc, f"{pod}: never deleted or restarted in its recorded history", restarts == 0 and not deleted,
              f"states {' > '.join(x or '-' for x in states)}; restarts {restarts}")


# ---------------------------------------------------------------------------- scenario 2
def s2(ctx):
    """The same two pods with kube-scheduler's default preemption: the victim is a Job's pod,
    deleted and started again from step 0."""
    sc, M = "s2", ctx.gpu["memory_bytes"]
    R = ctx.R["scenarios"].setdefault(sc, {"title": "Default preemption (baseline)"})
    alloc = ctx.R["setup"].get("allocatable_kybernate_gpu") or "1"
    uuid = ctx.gpu["uuid"]
    R["note"] = (f"default-scheduler knows no GPU memory: both pods ask for the whole GPU ({alloc} of kybernate.io/gpu, "
                 f"every slot) and name it (kybernate.io/gpus={uuid}) for the shim")
    vb, pb = 0.60 * M / GIB, 0.30 * M / GIB
    tmpl = gpu_pod(ctx, "x", "kybernate-batch-low", int(0.66 * M), vb, S1_STEPS, S1_SEED, sc, scheduler="default-scheduler",
                   gpus=uuid, limit=alloc, start_file="baseline.starts", labels={"app": "baseline"})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "baseline", "namespace": NS},
           "spec": {"backoffLimit": 4, "podReplacementPolicy": "Failed",
                    "template": {"metadata": {"labels": tmpl["metadata"]["labels"], "annotations": tmpl["metadata"]["annotations"]},
                                 "spec": dict(tmpl["spec"], restartPolicy="Never")}}}
    create(ctx, job, "jobs", "/apis/batch/v1")
    first = ctx.pods.wait_for(lambda l: next((n for n, o in l.items() if n.startswith("baseline-")), None), 60, "Job pod")
    wait_steps(ctx, sc, first, 150, 180)
    t_create = create(ctx, gpu_pod(ctx, "preemptor2", "kybernate-interactive-high", int(0.45 * M), pb, 300, 99, sc,
                                   scheduler="default-scheduler", gpus=uuid, limit=alloc))
    ctx.pods.wait_for(lambda l: running(l.get("preemptor2")), 180, "preemptor2 Running")
    t_run = first_event(ctx.pods, "preemptor2", running)["t"]
    R["preemptor_time_to_running_s"] = round(t_run - t_create, 2)
    lost = losses.read(steps_file(ctx, sc, first))
    R["victim_steps_lost"] = len(lost["steps"])
    ctx.check(sc, "default preemption deleted the victim's pod", first_event(ctx.pods, first, lambda o: o["metadata"].get("deletionTimestamp")) is not None,
              f"{len(lost['steps'])} steps written by {first} are lost")
    ctx.pods.wait_for(lambda l: phase(l.get("preemptor2")) in ("Succeeded", "Failed"), 120, "preemptor2 done")
    second = ctx.pods.wait_for(lambda l: next((n for n, o in l.items() if n.startswith("baseline-") and n != first), None), 60, "the Job's new pod")
    r2 = wait_steps(ctx, sc, second, 1, 180)
    s0 = r2["started"][0] if r2["started"] else {}
    R["restart"] = {"pod": second, "start": s0.get("start"), "first_step": r2["steps"][0]["step"]}
    ctx.check(sc, "the Job's new pod starts over: start counter 2, new token, step 0",
              s0.get("start") == 2 and r2["steps"][0]["step"] == 0 and
              s0.get("token") not in {x.get("token") for x in lost["steps"] + lost["started"]},
              f"start {s0.get('start')}, first step {r2['steps'][0]['step']}, time to Running of the preemptor {t_run - t_create:.2f} s")
    cleanup(ctx)


# ----------------------------------------------------------------------- scenarios 4 + 5
def s4(ctx):
    """Agent SIGKILL while two pods are suspended (4), and one of them deleted while suspended (5)."""
    sc, M = "s4", ctx.gpu["memory_bytes"]
    R = ctx.R["scenarios"].setdefault(sc, {"title": "Agent restart while suspended; deleting a suspended pod"})
    R5 = ctx.R["scenarios"].setdefault("s5", {"title": "Deleting a suspended pod returns its host memory"})
    reference = ref(ctx, S4_SEED, S4_STEPS)
    create(ctx, gpu_pod(ctx, "keep", "kybernate-batch-low", int(0.40 * M), 8, S4_STEPS, S4_SEED, sc, start_file="keep.starts"))
    create(ctx, gpu_pod(ctx, "drop", "kybernate-batch-low", int(0.40 * M), 8, 100000, 42, sc, start_file="drop.starts"))
    wait_steps(ctx, sc, "keep", 100, 180)
    wait_steps(ctx, sc, "drop", 20, 180)
    dpid = host_pid("drop")
    rss_running = rss(dpid)
    create(ctx, gpu_pod(ctx, "big", "kybernate-interactive-high", int(0.70 * M), 2, 1000000, 98, sc))
    for p in ("keep", "drop"):
        wait_cp(ctx, p, "Suspend", 120)
    ctx.pods.wait_for(lambda l: running(l.get("big")), 60, "big Running")
    # 4: SIGKILL the agent's process; the kubelet starts its container again.
    apid = agent_pid()
    R["agent_pid_killed"] = apid
    t_kill = time.time()
    os.kill(apid, signal.SIGKILL)
    ctx.node.wait(lambda: agent_pid() not in (None, apid) and agent_ready(ctx), min(120, ctx.remaining()), "agent back")
    R["agent_back_s"] = round(time.time() - t_kill, 1)
    ctx.log(f"agent back after {R['agent_back_s']}s (pid {agent_pid()})")
    # 5: delete the suspended pod "drop"; its process ends and its parked memory returns.
    rss_parked, avail_before = rss(dpid), mem_available()
    t_del = time.time()
    delete(ctx, "drop")
    ctx.node.wait(lambda: not os.path.exists(f"/proc/{dpid}") or proc_state(dpid) in ("Z", "X"), 60, "drop's process gone")
    gone_s = time.time() - t_del
    parked = (rss_parked or 0) - (rss_running or 0)
    # The kernel frees a dead process's pages after /proc shows it gone (the first H100 run read
    # MemAvailable 0.2 s after: +3.9 of 8.9 GiB): wait, bounded, until they are back.
    returned = lambda: mem_available() - avail_before >= 0.8 * parked
    try:
        ctx.node.wait(returned, 30, "drop's parked memory back in MemAvailable", every=0.1)
    except TimeoutError:
        pass
    returned_s = time.time() - t_del
    avail_after = mem_available()
    R5.update({"host_pid": dpid, "rss_running_gib": gib(rss_running), "rss_suspended_gib": gib(rss_parked),
               "mem_available_before_gib": gib(avail_before), "mem_available_after_gib": gib(avail_after),
               "process_gone_s": round(gone_s, 2), "memory_returned_s": round(returned_s, 2)})
    ctx.check("s5", "deleting the suspended pod ends its process and returns its parked host memory (within 30 s)",
              parked > 4 * GIB and avail_after - avail_before >= 0.8 * parked,
              f"RSS {gib(rss_running)} GiB running, {gib(rss_parked)} GiB suspended; MemAvailable {gib(avail_before)} -> "
              f"{gib(avail_after)} GiB after {returned_s:.1f} s; process gone {gone_s:.1f} s after the delete")
    guard = s6_guard_before(ctx)
    t_big = time.time()
    delete(ctx, "big")
    if guard:
        s6_guard_after(ctx, guard, t_big)
    res = wait_cp(ctx, "keep", "Resume", 180, after=t_kill, retryable=("InsufficientGPUMemory",))
    R["resume_after_restart"] = moved(res)
    ctx.pods.wait_for(lambda l: phase(l.get("keep")) in ("Succeeded", "Failed"), 180, "keep done")
    ctx.check(sc, "the pod suspended across the agent's SIGKILL and restart is resumed and completes",
              phase(ctx.pods.latest.get("keep")) == "Succeeded", pod_why(ctx.pods.latest.get("keep")))
    report_losses(ctx, sc, "keep", steps_file(ctx, sc, "keep"), reference)
    cleanup(ctx)


def s6_guard_before(ctx):
    """Restore guard, part 1: a process outside Kybernate (PyTorch on the host) takes the GPU's
    free memory while "keep" is suspended and "big" still runs."""
    if "6" not in ctx.scenarios:
        return None
    R6 = ctx.R["scenarios"].setdefault("s6", {"title": "Restore guard: memory taken outside Kybernate"})
    free = ctx.gpu["memory_bytes"] - ctx.sampler.samples[-1]["used"]
    hog = int(free - 1536 * (1 << 20))  # its CUDA context takes about 0.5 GiB more
    ready = os.path.join(ctx.work, "hog.ready")
    code = ("import sys, time, torch; x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device='cuda'); "
            "torch.cuda.synchronize(); open(sys.argv[2], 'w').write('ok'); time.sleep(600)")
    proc = subprocess.Popen([ctx.python, "-c", code, str(hog), ready], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    ctx.node.wait(lambda: os.path.exists(ready), 60, "the outside process holds its memory", proc=proc)
    R6.update({"outside_process_gib": gib(hog), "free_before_gib": gib(free), "outside_pid": proc.pid})
    ctx.log(f"outside process {proc.pid} holds {gib(hog)} GiB")
    return proc


def s6_guard_after(ctx, hog, t_big):
    """Restore guard, part 2: "big" ended; while the outside process holds the memory the pod
    must stay suspended: a resume is refused as not yet (InsufficientGPUMemory: the driver is
    never asked), or none is tried. Once the outside process ended the resume succeeds."""
    R6 = ctx.R["scenarios"]["s6"]

    def refused_resume(_):
        return next((c for c in checkpoints(ctx, "keep", "Resume")
                     if c["_first"] >= t_big and c.get("status", {}).get("phase") in ("Failed", "Succeeded")), None)
    try:
        seen = ctx.cps.wait_for(refused_resume, 30, "a resume of keep")
    except TimeoutError:
        seen = None
    finally:
        hog.kill()
        hog.wait()
    t_free = time.time()
    st = (seen or {}).get("status", {})
    R6["while_held"] = {"resume_tried": seen is not None, "phase": st.get("phase"), "message": st.get("message", "")[:400]}
    ok = (seen is None or (st.get("phase") == "Failed" and "InsufficientGPUMemory" in str(st))) and \
        not any(c.get("status", {}).get("phase") == "Succeeded" for c in checkpoints(ctx, "keep", "Resume") if c["_first"] >= t_big
                and c["_last"] < t_free)
    ctx.check("s6", "while a process outside Kybernate holds the GPU's memory, keep stays suspended: its resume is refused "
                    "as not yet (InsufficientGPUMemory) or not tried",
              ok, (f"refused: {st.get('message', '')[:250]}" if seen else "no resume tried within 30 s") +
              f"; state {state(ctx.pods.latest.get('keep'))!r}")
    res = wait_cp(ctx, "keep", "Resume", 120, after=t_free - 1, retryable=("InsufficientGPUMemory",))
    R6["resumed_after_s"] = round(time.time() - t_free, 1)
    ctx.check("s6", "once the outside process ended the resume succeeds", res.get("status", {}).get("phase") == "Succeeded",
              f"{R6['resumed_after_s']} s after the outside process ended")


def gib(b):
    return round(b / GIB, 2) if b is not None else None


def proc_state(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def agent_pid():
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")[0] == b"/kybernate-agent" and \
                        CGROUP_MARK in open(f"/proc/{d}/cgroup").read():
                    return int(d)
            except OSError:
                pass
    return None


def agent_ready(ctx):
    ds = ctx.node.api("GET", "/apis/apps/v1/namespaces/kybernate-system/daemonsets/kybernate-agent")
    return ds.get("status", {}).get("numberReady") == 1


# ---------------------------------------------------------------------------- scenario 3
def s3(ctx):
    """Time slicing: three equal-priority pods, each declaring a little over a third of the GPU."""
    sc, M = "s3", ctx.gpu["memory_bytes"]
    R = ctx.R["scenarios"].setdefault(sc, {"title": "Time slicing of three pods"})
    refs = {s: ref(ctx, s, S3_REF_STEPS) for s in S3_SEEDS}
    names = [f"turn-{i}" for i in range(3)]
    pace, ballast = 0.04, 4
    R.update({"declared_gib": round(0.34 * M / GIB, 1), "ballast_gib": ballast, "pace_s": pace,
              "quantum": ctx.R["setup"].get("quantum"), "min_quantum_factor": ctx.R["setup"].get("factor")})
    t0 = time.time()
    for n, s in zip(names, S3_SEEDS):
        create(ctx, gpu_pod(ctx, n, "kybernate-batch-low", int(0.34 * M), ballast, S3_REF_STEPS, s, sc, pace=pace,
                            start_file=n + ".starts"))
    gap = 1.0

    def shares():
        iv = {n: losses.resident_intervals(steps_file(ctx, sc, n), gap) for n in names}
        tot = {n: sum(b - a for a, b in iv[n]) for n in names}
        s = sum(tot.values()) or 1
        return iv, {n: tot[n] / s for n in names}, tot

    end = time.time() + min(240, ctx.remaining() - 20)
    while time.time() < end:
        iv, sh, tot = shares()
        if all(len(iv[n]) >= 2 for n in names) and all(abs(sh[n] - 1 / 3) <= 0.15 / 3 for n in names):
            break
        time.sleep(1)
    t1 = time.time()
    iv, sh, tot = shares()
    util = [s["util"] for s in ctx.sampler.between(t0, t1)]
    R.update({"window_s": round(t1 - t0, 1), "turns": {n: len(iv[n]) for n in names},
              "resident_s": {n: round(tot[n], 1) for n in names}, "shares": {n: round(sh[n], 3) for n in names},
              "gpu_time_annotation": {n: (ctx.pods.latest.get(n) or {}).get("metadata", {}).get("annotations", {}).get("kybernate.io/gpu-time") for n in names},
              "nvml_busy_fraction": round(sum(1 for u in util if u > 0) / len(util), 3) if util else None,
              "nvml_mean_utilization_pct": round(sum(util) / len(util), 1) if util else None,
              "suspends": [moved(c) for n in names for c in checkpoints(ctx, n, "Suspend")],
              "resumes": [moved(c) for n in names for c in checkpoints(ctx, n, "Resume")]})
    ctx.check(sc, "each pod got >= 2 turns", all(len(iv[n]) >= 2 for n in names), str(R["turns"]))
    ctx.check(sc, "GPU-time shares within +-15% of 1/3", all(abs(sh[n] - 1 / 3) <= 0.15 / 3 for n in names),
              f"shares {R['shares']} over {R['window_s']} s")
    for n, s in zip(names, S3_SEEDS):
        report_losses(ctx, sc, n, steps_file(ctx, sc, n), refs[s], want_done=False)
    cleanup(ctx)


RUN = {"1": s1, "2": s2, "3": s3, "4": s4}
