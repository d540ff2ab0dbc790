"""Scenario 7 of cluster_suite.py: scale to zero (issue 24), on the real node.

kybernate-activator is installed as a user installs it (`kubectl apply -k manifests/activator/`,
here through the suite's overlay: host network and ports, as for the scheduler). A model server
(test/modelserver/modelserver.py, --device cuda, the host's Python and PyTorch as every pod of
the suite) sits behind an ExternalName Service that names the activator, with
kybernate.io/idle-after. For N = 8 and 32 GiB of weights it measures:

  cold start  pod created -> first successful response through the activator (the request is
              sent right after the pod is created and held by the activator until the pod is
              ready; a 503 after --hold-timeout is retried and counted)
  wake        after the pod went idle and was suspended (GPUCheckpoint Suspend, reason Idle;
              NVML shows its memory freed): request sent -> first successful response; split
              into asking (activator stamps kybernate.io/wake-requested), resume (resume
              controller + agent, the Resume GPUCheckpoint), readiness (the pod's state Running
              again) and proxy (the held request forwarded and answered)

The weights files are written on the host before anything is timed (prepare(), started with
the bring-up, flushed to disk); the model server finds them and writes nothing (its `ready`
line says generate_s 0, a check). The files are in the host's page cache when the pods read
them: the cold start's most favourable case.

Clients reach the activator on its host port with the Service's name as Host header: the
machine has no kube-proxy and no cluster DNS, so `<service>.<namespace>` does not resolve there.

Without a GPU (the rehearsal) rehearse() runs the CPU model server behind the activator, to
show the activator, its image, RBAC and routing work before the GPU run.
"""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import time
import traceback

import cluster_node
import cluster_scenarios as cs
import cluster_tiers

NS = cs.NS
GIB = 1 << 30
PORT, METRICS = 19480, 19465  # the activator's proxy and /metrics, /healthz, /readyz (host network)
SIZES = (8, 32)
IDLE_AFTER = "4s"
WORK_GIB = 0.5
WAKES = {8: 3, 32: 2}  # wakes per size, fewer when time is short
RESERVE_S = 150  # time the 32 GiB size needs (cold start and two wakes), kept when the 8 GiB one repeats its wake
SC = "s7"
DISK_WAKE = ("after the wakes from host memory, the first size sleeps once more with kybernate.io/sleep: Disk: the "
             "agent's tier policy spills its container (CRIU image with the parked GPU memory, encrypted on disk), "
             "a request wakes it from there (the kubelet's held create, the shim's restore, the agent's driver restore)")
# Disk the spill needs beside what is there, per GiB the server holds asleep: the plaintext
# image while it is encrypted into the disk tier, and the stored copy.
DISK_PER_GIB = 2.2


# ------------------------------------------------------------------------ install hooks
def overlay(node):
    """What cluster_node.install adds to its overlay: manifests/activator and a patch with the
    same changes the scheduler gets (host network, the API server at 127.0.0.1, ports)."""
    d = node.p("deploy")
    cmd = node.container(f"{d}/manifests/activator/deployment.yaml")["command"]
    probe = {"httpGet": {"path": "/readyz", "port": METRICS}, "periodSeconds": 1}
    env = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
           {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster_node.PORTS["apiserver"])}]
    patch = [
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "add", "path": "/spec/template/spec/dnsPolicy", "value": "ClusterFirstWithHostNet"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": cluster_node.with_flags(
            cmd, {"--bind-address": f":{PORT}", "--metrics-bind-address": f":{METRICS}"})},
        {"op": "replace", "path": "/spec/template/spec/containers/0/ports", "value": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS, "protocol": "TCP"}]},
        {"op": "replace", "path": "/spec/template/spec/containers/0/livenessProbe",
         "value": {"httpGet": {"path": "/healthz", "port": METRICS}}},
        {"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe", "value": probe},
        {"op": "add", "path": "/spec/template/spec/containers/0/env", "value": env},
    ]
    return {"resources": ["../manifests/activator"],
            "patches": [{"target": {"kind": "Deployment", "name": "kybernate-activator"}, "patch": json.dumps(patch)}]}


def prepare(work, python, repo, gpu, log):
    """Starts writing the weights files (in the background, during the bring-up): both at once
    when the disk has room for them, else the first only (the next is written after the size
    before it, outside any timing). Returns the state s7 reads."""
    d = os.path.join(work, "weights")
    os.makedirs(d, exist_ok=True)
    sizes = SIZES if gpu else (0.0625,)
    free = shutil.disk_usage(d).free
    together = free >= (sum(sizes) + 6) * GIB
    w = {"dir": d, "sizes": list(sizes), "together": together, "free_gib": round(free / GIB, 1), "procs": {},
         "script": os.path.join(repo, "test", "modelserver", "modelserver.py"), "python": python, "log": log}
    for n in (sizes if together else sizes[:1]):
        _generate(w, n)
    log(f"s7: writing weights {', '.join(str(n) for n in w['procs'])} GiB in {d} ({w['free_gib']} GiB free"
        f"{'' if together else '; one at a time'})")
    return w


def _generate(w, n):
    f = open(os.path.join(w["dir"], f"generate-{n}.log"), "w")
    w["procs"][n] = (time.time(), subprocess.Popen(
        [w["python"], w["script"], "--generate-only", "--gib", str(n), "--weights", weights_path(w, n)],
        stdout=f, stderr=subprocess.STDOUT))


def weights_path(w, n):
    return os.path.join(w["dir"], f"w{n}.bin")


def wait_weights(ctx, n):
    """Waits until the weights of size N are written and flushed; every generation has ended
    before anything is timed (no disk writes during a measurement)."""
    w = ctx.weights
    if n not in w["procs"]:
        _generate(w, n)
    t = time.time()
    out = {}
    for m, (t0, p) in list(w["procs"].items()):
        try:
            rc = p.wait(timeout=max(1, min(600, ctx.remaining())))
        except subprocess.TimeoutExpired:
            p.kill()
            raise TimeoutError(f"writing the {m} GiB weights: not before the deadline")
        if rc != 0:
            raise RuntimeError(f"writing the {m} GiB weights failed (rc {rc}); see {w['dir']}/generate-{m}.log")
        line = open(os.path.join(w["dir"], f"generate-{m}.log")).read().strip().splitlines()[-1]
        out[m] = json.loads(line)
    return out, round(time.time() - t, 1)


# ----------------------------------------------------------------------------- objects
def service(name, port):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "labels": {"scenario": SC},
                         "annotations": {"kybernate.io/backend-selector": f"app={name}",
                                         "kybernate.io/backend-port": str(port)}},
            "spec": {"type": "ExternalName", "externalName": "kybernate-activator.kybernate-system.svc.cluster.local"}}


def model_pod(ctx, name, gib, port, gpu, restart="Never"):
    """The model server's pod: the host's Python tree read-only (as the suite's other pods),
    modelserver.py and the weights folder by hostPath, readiness on /health every second."""
    mounts = [{"name": f"host{i}", "mountPath": b, "readOnly": True} for i, b in enumerate(ctx.binds)]
    vols = [{"name": f"host{i}", "hostPath": {"path": b, "type": "Directory"}} for i, b in enumerate(ctx.binds)]
    mounts += [{"name": "server", "mountPath": "/modelserver", "readOnly": True},
               {"name": "weights", "mountPath": "/weights", "readOnly": True}]
    vols += [{"name": "server", "hostPath": {"path": os.path.dirname(ctx.weights["script"]), "type": "Directory"}},
             {"name": "weights", "hostPath": {"path": ctx.weights["dir"], "type": "Directory"}}]
    env = {"PYTHONUNBUFFERED": "1", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    ann = {"kybernate.io/idle-after": IDLE_AFTER, "kybernate.io/sleep": "HostMemory"}
    c = {"name": "server", "image": "docker.io/kybernate/host-python:dev", "imagePullPolicy": "Never",
         "command": [ctx.python, "/modelserver/modelserver.py", "--gib", str(gib), "--weights", f"/weights/w{gib}.bin",
                     "--device", "cuda" if gpu else "cpu", "--work-gib", str(WORK_GIB), "--port", str(port)],
         "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}] +
                [{"name": k, "value": v} for k, v in env.items()],
         "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
         "readinessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 1, "failureThreshold": 1},
         "volumeMounts": mounts}
    sim = getattr(ctx, "simulated", False)
    if sim:
        # Rehearsal: the agent's GPUs are simulated. The pod asks for one, so the scheduler,
        # the activator and the (simulated) agent do everything they do for a GPU pod, but its
        # process is the CPU server under runc (the shim would expose GPUs that do not exist).
        c["command"][c["command"].index("cuda")] = "cpu"
    spec = {"schedulerName": "kybernate-scheduler", "runtimeClassName": "kybernate",
            "priorityClassName": "kybernate-interactive-high", "restartPolicy": restart, "hostNetwork": True,
            "enableServiceLinks": False, "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 5,
            "containers": [c], "volumes": vols}
    if gpu:
        # Weights, working memory, CUDA context and PyTorch's allocator.
        ann["kybernate.io/gpu-memory"] = f"{int((gib + WORK_GIB + 3) * 1024)}Mi"
        c["resources"] = {"limits": {"kybernate.io/gpu": "1"}}
        if sim:
            del spec["runtimeClassName"]
    else:
        # Rehearsal without a GPU: no GPU asked for, placed by kube-scheduler, never put to sleep.
        spec["schedulerName"] = "default-scheduler"
        del ann["kybernate.io/idle-after"], ann["kybernate.io/sleep"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name, "scenario": SC}, "annotations": ann},
            "spec": spec}


# ------------------------------------------------------------------------------ client
def ask(host, timeout, tokens=4):
    """One completion through the activator: (status, body, time the answer was read)."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "wake up", "max_tokens": tokens}),
                     headers={"Host": host, "Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        return r.status, body, time.time()
    finally:
        conn.close()


def until_ok(ctx, host, timeout, pod=None):
    """Asks until an answer 200 comes; every other answer (a 503 after the hold timeout, a
    refused connection) is kept and asked again, unless POD ended (its log tail is in the
    error). Returns (time of the 200, body, others)."""
    end = time.time() + min(timeout, max(5, ctx.remaining()))
    others = []
    while time.time() < end:
        o = ctx.pods.latest.get(pod) if pod else None
        if o and cs.phase(o) in ("Failed", "Succeeded"):
            tail = ctx.node.kubectl("logs", "-n", NS, pod, check=False, timeout=20)[-1200:]
            raise RuntimeError(f"pod {pod} ended: {cs.pod_why(o)[:600]}; its log ends: {tail!r}")
        try:
            st, body, t = ask(host, max(5, end - time.time()))
        except OSError as e:
            others.append({"t": round(time.time(), 3), "error": f"{type(e).__name__}: {e}"[:200]})
            time.sleep(0.2)
            continue
        if st == 200:
            return t, json.loads(body), others
        others.append({"t": round(t, 3), "status": st, "body": body[:300]})
        time.sleep(0.2)
    raise TimeoutError(f"{host}: no answer 200 within {timeout:.0f}s; last answers {others[-3:]}")


def wait_route(ctx, host):
    """Waits until the activator knows the Service (503 'no pod matches' instead of 404)."""
    end = time.time() + 60
    last = None
    while time.time() < end:
        try:
            st, body, _ = ask(host, 10)
            last = (st, body[:200])
            if st == 503 and "no pod matches" in body:
                return last
        except OSError as e:
            last = str(e)
        time.sleep(0.3)
    raise TimeoutError(f"the activator did not route {host} within 60 s: {last}")


def activator_ready(ctx, timeout=90):
    t = time.time()

    def up():
        d = ctx.node.api("GET", "/apis/apps/v1/namespaces/kybernate-system/deployments/kybernate-activator", ok404=True)
        return d and d.get("status", {}).get("readyReplicas") == 1
    ctx.node.wait(up, min(timeout, max(5, ctx.remaining())), "kybernate-activator Ready")
    return round(time.time() - t, 1)


# --------------------------------------------------------------------------- timelines
def first_pod_event(ctx, name, pred, after):
    e = cs.first_event(ctx.pods, name, pred, after)
    return e["t"] if e else None


def ready(o):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (o or {}).get("status", {}).get("conditions", []))


def cold_split(ctx, name, t_create, t_ok):
    rel = lambda t: round(t - t_create, 2) if t else None
    return {"bound": rel(first_pod_event(ctx, name, lambda o: o["spec"].get("nodeName"), t_create)),
            "container_running": rel(first_pod_event(ctx, name, cs.running, t_create)),
            "ready": rel(first_pod_event(ctx, name, ready, t_create)),
            "answered": rel(t_ok)}


def wake_split(ctx, name, t_req, t_ok, before):
    """Times after the request: wake asked (annotation stamped), Resume created and Succeeded,
    state Running again, answered; and the split resume / readiness / proxy."""
    def stamped(o):
        v = o["metadata"].get("annotations", {}).get("kybernate.io/wake-requested")
        return v and v != before
    t_stamp = first_pod_event(ctx, name, stamped, t_req - 0.5)
    res = [c for c in cs.checkpoints(ctx, name, "Resume") if c["_first"] >= t_req - 0.5]
    t_cp, t_done, m = None, None, None
    if res:
        cp = res[0]
        t_cp = cp["_first"]
        done = next((e for e in ctx.cps.events if e["name"] == cp["metadata"]["name"] and
                     e["obj"].get("status", {}).get("phase") == "Succeeded"), None)
        t_done = done["t"] if done else None
        m = cs.moved(done["obj"] if done else cp)
    t_run = first_pod_event(ctx, name, lambda o: cs.state(o) in ("", "Running"), t_stamp or t_req)
    rel = lambda t: round(t - t_req, 3) if t else None
    out = {"wake_asked": rel(t_stamp), "resume_created": rel(t_cp), "resume_succeeded": rel(t_done),
           "state_running": rel(t_run), "answered": rel(t_ok), "resumes": len(res), "resume": m}
    if t_stamp and t_cp and t_run:
        # ask: the activator stamps the pod; resume: the resume controller creates the Resume
        # (controller) and the agent restores until the pod is Running again (the pod's Ready
        # condition stays True while it sleeps: its server answers /health without the GPU);
        # proxy: the activator sees it Running, forwards the held request, the model answers.
        out["split_s"] = {"ask": round(t_stamp - t_req, 3), "controller": round(t_cp - t_stamp, 3),
                          "resume": round(t_run - t_stamp, 3), "proxy": round(t_ok - t_run, 3)}
    return out


def server_ready_line(ctx, name):
    logs = ctx.node.kubectl("logs", "-n", NS, name, check=False, timeout=20)
    for line in logs.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event") == "ready":
            return d
    return None


def server_pid(name):
    want = f"POD_NAME={name}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if b"modelserver.py" in open(f"/proc/{d}/cmdline", "rb").read() and \
                    want in open(f"/proc/{d}/environ", "rb").read().split(b"\0"):
                return int(d)
        except OSError:
            continue
    return None


def nvml_after(ctx, t, n=4, timeout=10):
    """N NVML samples taken after T."""
    end = time.time() + timeout
    while time.time() < end:
        s = [x for x in ctx.sampler.samples if x["t"] >= t]
        if len(s) >= n:
            return s[:n]
        time.sleep(0.25)
    return [x for x in ctx.sampler.samples if x["t"] >= t]


# ---------------------------------------------------------------------------- scenario
def cold_start(ctx, R, name, gib, port, gpu, restart="Never"):
    """Creates the Service and the pod; the first request goes out right after the pod's creation.
    A pod that will sleep on disk has restartPolicy OnFailure: the kubelet creates its spilled
    container again, and the shim restores it."""
    host = f"{name}.{NS}"
    cs.create(ctx, service(name, port), "services")
    R["route_before_pod"] = wait_route(ctx, host)
    t_create = cs.create(ctx, model_pod(ctx, name, gib, port, gpu, restart))
    t_ok, body, others = until_ok(ctx, host, 420, name)
    R["cold_start_s"] = round(t_ok - t_create, 2)
    # The suite's watch may see the pod Ready a moment after the answer.
    try:
        ctx.pods.wait_for(lambda l: ready(l.get(name)), 10, f"{name} Ready")
    except TimeoutError as e:
        ctx.log(str(e))
    R["cold_split_s"] = cold_split(ctx, name, t_create, t_ok)
    R["cold_retries"] = others
    R["weights_checksum"], R["answer"] = body.get("weights"), body.get("text")
    line = server_ready_line(ctx, name) or {}
    R["server_ready_line"] = line
    ctx.log(f"s7 {gib} GiB: cold start {R['cold_start_s']} s {R['cold_split_s']}; server {line}")
    ctx.check(SC, f"{gib} GiB cold start: pod created -> first answer 200 through the activator",
              True, f"{R['cold_start_s']} s; {R['cold_split_s']}; {len(others)} other answers before it")
    ctx.check(SC, f"{gib} GiB: the weights were written before the timed start (the server wrote none: generate_s 0)",
              line.get("generate_s") == 0, f"server's ready line: {line}")
    return host


def sleep_once(ctx, R, name, gib, after):
    """Waits for the idle suspension and checks NVML while the pod sleeps."""
    cp = cs.wait_cp(ctx, name, "Suspend", 180, after=after)
    m = cs.moved(cp)
    done = next((e["t"] for e in ctx.cps.events if e["name"] == cp["metadata"]["name"] and
                 e["obj"].get("status", {}).get("phase") == "Succeeded"), cp["_last"])
    pid = server_pid(name)
    win = nvml_after(ctx, done) if ctx.sampler else []  # none with the simulated agent
    used = min((s["used"] for s in win), default=None)
    freed = used is not None and used < 2 * GIB and all(pid not in [p for p, _ in s["procs"]] for s in win)
    sl = {"suspend": m, "idle_to_suspend_s": round(cp["_first"] - after, 2), "nvml_used_gib_asleep": cs.gib(used),
          "pid": pid, "rss_asleep_gib": cs.gib(cs.rss(pid)) if pid else None, "freed": freed}
    ctx.log(f"s7 {gib} GiB: asleep: {sl}")
    return sl, done


def wake_once(ctx, R, name, host, gib):
    before = (ctx.pods.latest.get(name) or {}).get("metadata", {}).get("annotations", {}).get("kybernate.io/wake-requested")
    t_req = time.time()
    t_ok, body, others = until_ok(ctx, host, 300, name)
    # The answer is computed on the GPU from what the server loaded: the same text as before
    # the sleep means its GPU memory came back intact.
    w = {"wake_s": round(t_ok - t_req, 3), "other_answers": others,
         "same_answer": body.get("text") == R["answer"] and body.get("weights") == R["weights_checksum"]}
    # The suite's watches may see the last events a moment after the answer.
    ctx.pods.wait_for(lambda l: cs.state(l.get(name)) in ("", "Running"), 10, f"{name} Running")
    try:
        cs.wait_cp(ctx, name, "Resume", 30, after=t_req - 0.5)
    except (TimeoutError, RuntimeError) as e:
        w["resume_error"] = str(e)[:300]
    w.update(wake_split(ctx, name, t_req, t_ok, before))
    ctx.log(f"s7 {gib} GiB: wake {w['wake_s']} s {w.get('split_s')}")
    return w, t_ok


def one_size(ctx, gib, port, gpu, reserve=0, disk=False):
    R = ctx.R["scenarios"][SC].setdefault("sizes", {}).setdefault(str(gib), {"gib": gib})
    gen, waited = wait_weights(ctx, gib)
    R["weights"] = {"file": weights_path(ctx.weights, gib), "generated": gen.get(gib), "waited_s": waited}
    name = f"llm-{gib}".replace(".", "-")
    sim = getattr(ctx, "simulated", False)
    host = cold_start(ctx, R, name, gib, port, gpu, "OnFailure" if disk else "Never")
    if not gpu:
        return
    pid = server_pid(name)
    awake = nvml_after(ctx, time.time(), 2) if ctx.sampler else []
    R["nvml_used_gib_awake"] = cs.gib(max((s["used"] for s in awake), default=None))
    R["pid"] = pid
    R["wakes"] = []
    t_last = time.time()
    cycle = None
    wakes = WAKES.get(gib, 2)
    for i in range(wakes):
        if i and cycle and ctx.remaining() < cycle * 1.3 + 30 + reserve:
            R["wakes_skipped"] = f"{wakes - i} wakes left out: {ctx.remaining():.0f} s before the deadline"
            break
        t_cycle = time.time()
        sl, _ = sleep_once(ctx, R, name, gib, t_last)
        w, t_last = wake_once(ctx, R, name, host, gib)
        w["sleep"] = sl
        R["wakes"].append(w)
        ctx.save()
        cycle = time.time() - t_cycle
    wakes = [w["wake_s"] for w in R["wakes"]]
    R["wake_median_s"] = round(statistics.median(wakes), 3) if wakes else None
    R["ratio"] = round(R["cold_start_s"] / R["wake_median_s"], 1) if wakes else None
    if disk:
        disk_wake(ctx, R, name, host, gib, t_last)
    cold_uncached(ctx, R, name, gib, port, host, reserve)
    sleeps = [w["sleep"] for w in R["wakes"]]
    pre = "SIMULATED agent, no NVML: " if sim else ""
    ctx.check(SC, pre + f"{gib} GiB: idle -> put to sleep (GPUCheckpoint Suspend, reason Idle) and NVML shows its GPU "
                  "memory freed (its pid gone, GPU < 2 GiB used)",
              sleeps and all(s["suspend"]["reason"] == "Idle" and (s["freed"] or sim) for s in sleeps),
              "; ".join(f"{s['suspend']['reason']} {s['suspend']['s']} s {s['suspend']['gbps']} GB/s, "
                        f"GPU {s['nvml_used_gib_asleep']} GiB" for s in sleeps) or "no sleep")
    ctx.check(SC, pre + f"{gib} GiB: every wake answered 200 through one Resume, with the answer given before the sleep "
                  "(computed on the GPU: its memory intact)",
              wakes and all(w["same_answer"] and w["resumes"] == 1 for w in R["wakes"]),
              "; ".join(f"{w['wake_s']} s, resumes {w['resumes']}, same answer {w['same_answer']}, "
                        f"{len(w['other_answers'])} other answers" for w in R["wakes"]))
    ctx.check(SC, pre + f"{gib} GiB: wake from suspension >= 10x faster than the cold start",
              R["ratio"] is not None and R["ratio"] >= 10,
              f"cold {R['cold_start_s']} s / wake {R['wake_median_s']} s (median of {len(wakes)}) = {R['ratio']}x")


def s7(ctx):
    R = ctx.R["scenarios"].setdefault(SC, {"title": "Scale to zero: cold start vs wake from suspension"})
    R.update({"idle_after": IDLE_AFTER, "work_gib": WORK_GIB, "activator_port": PORT, "disk_wake": DISK_WAKE,
              "weights_together": ctx.weights["together"], "disk_free_gib": ctx.weights["free_gib"]})
    R["activator_ready_s"] = activator_ready(ctx)
    if ctx.refs is not None and ctx.refs.poll() is None:
        # Another scenario's reference runs would share the GPU with the timed starts.
        t = time.time()
        ctx.refs.wait(timeout=max(1, min(300, ctx.remaining())))
        R["waited_for_references_s"] = round(time.time() - t, 1)
    sizes = ctx.weights["sizes"]
    for i, gib in enumerate(sizes):
        port = 19800 + i
        try:
            one_size(ctx, gib, port, True, RESERVE_S if i + 1 < len(sizes) else 0, disk=i == 0)
        except Exception as e:  # noqa: BLE001 - the next size still runs
            ctx.check(SC, f"{gib} GiB completed", False, f"{type(e).__name__}: {e}")
            ctx.R["errors"].append(traceback.format_exc())
        finally:
            cs.cleanup(ctx)
            # Pods are deleted with grace 0: the next size starts once this server's process ended.
            name = f"llm-{gib}"
            try:
                ctx.node.wait(lambda: server_pid(name) is None, 60, f"{name}'s process gone")
            except TimeoutError as e:
                ctx.log(str(e))
            if not ctx.weights["together"] and os.path.exists(weights_path(ctx.weights, gib)):
                os.remove(weights_path(ctx.weights, gib))  # room for the next size's file
            ctx.save()
    R["activator_metrics"] = activator_metrics()


def activator_metrics():
    """The activator's own figures (kybernate_activator_*: wakes by outcome, wake latency
    histogram, sleeps, refusals) from its /metrics on the host port."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        return [f"error: {e}"]
    return [l for l in text.splitlines() if l.startswith("kybernate_activator_") and
            ("_bucket" not in l or 'le="+Inf"' in l)][:60]


def rehearse(ctx):
    """Without a GPU (the agent's GPUs simulated): the activator Ready, routing by Host, and the
    whole path of the scenario with the CPU model server, whose pod asks for a simulated GPU:
    cold start, idle sleep and wakes carried out by the SIMULATED agent (the process is never
    suspended; no NVML). Labelled a rehearsal in the report; its figures are not measurements."""
    R = ctx.R["scenarios"].setdefault(SC, {"title": "Scale to zero (rehearsal without a GPU: CPU model server, "
                                                    "SIMULATED agent)"})
    R.update({"rehearsal": True, "idle_after": IDLE_AFTER, "work_gib": WORK_GIB, "disk_wake": DISK_WAKE})
    ctx.simulated = True
    # The simulated agent makes the GPUs of a node from its labels: one H100 here.
    node = cluster_node.NODE
    ctx.node.api("PATCH", f"/api/v1/nodes/{node}", {"metadata": {"labels": {
        "kybernate.io/gpu-model": "NVIDIA-H100-80GB-HBM3", "kybernate.io/gpu-count": "1"}}},
        ctype="application/merge-patch+json")
    ctx.node.wait(lambda: ctx.node.api("GET", f"/api/v1/nodes/{node}")["status"].get("allocatable", {})
                  .get("kybernate.io/gpu", "0") != "0", 60, "the node advertises a simulated kybernate.io/gpu")
    R["activator_ready_s"] = activator_ready(ctx)
    ctx.check(SC, "kybernate-activator Ready (kubectl apply -k manifests/activator via the overlay)", True,
              f"{R['activator_ready_s']} s")
    try:
        one_size(ctx, ctx.weights["sizes"][0], 19800, True)
    finally:
        cs.cleanup(ctx)
        R["activator_metrics"] = activator_metrics()


def disk_wake(ctx, R, name, host, gib, t_last):
    """One more sleep, on disk: the pod's kybernate.io/sleep patched to Disk, its idle sleep
    spilled to the disk tier by the agent's policy, then a request wakes it from the image."""
    D = R.setdefault("disk", {})
    need = DISK_PER_GIB * (gib + WORK_GIB + 3) * GIB
    free = shutil.disk_usage(ctx.node.p("tiers")).free
    D["disk_free_gib"], D["disk_needed_gib"] = cs.gib(free), cs.gib(need)
    if free < need:
        D["skipped"] = f"not run: {cs.gib(free)} GiB free on the disk tier's filesystem, {cs.gib(need)} GiB needed"
        ctx.check(SC, f"{gib} GiB: wake from a disk image", False, D["skipped"])
        return
    ctx.node.api("PATCH", f"/api/v1/namespaces/{NS}/pods/{name}", {"metadata": {"annotations": {"kybernate.io/sleep": "Disk"}}},
                 ctype="application/merge-patch+json")
    pid = server_pid(name)
    sl, _ = sleep_once(ctx, R, name, gib, t_last)
    ev = cluster_tiers.wait_event(ctx, name, "SpilledToDisk", 300)
    ctx.node.wait(lambda: server_pid(name) is None, 60, f"{name}'s spilled process gone")
    D.update({"sleep": sl, "spilled": ev.get("message"), "pid_before": pid})
    w, _ = wake_once(ctx, R, name, host, gib)
    w["restored"] = (cluster_tiers.events(ctx, name, "RestoredFromTier") or [{}])[-1].get("message")
    w["pid_after"] = server_pid(name)
    D["wake"] = w
    D["ratio"] = round(R["cold_start_s"] / w["wake_s"], 1) if w["wake_s"] else None
    ctx.log(f"s7 {gib} GiB: wake from disk {w['wake_s']} s {w.get('split_s')}")
    ctx.check(SC, f"{gib} GiB: wake from a disk image (spilled by the tier policy, its process ended) answered 200 through "
                  "one Resume with the answer given before the sleep (its GPU memory intact)",
              w["same_answer"] and w["resumes"] == 1 and "parked GPU memory" in (ev.get("message") or ""),
              f"{w['wake_s']} s (cold start {R['cold_start_s']} s: {D['ratio']}x), split {w.get('split_s')}, "
              f"{len(w['other_answers'])} other answers; {(ev.get('message') or '')[:200]}")


def cold_uncached(ctx, R, name, gib, port, host, reserve):
    """A second cold start with nothing in the page cache (the weights, PyTorch and Python read
    from disk, as on a node that has not served the model lately): the pod deleted, the node's
    page cache dropped, the same pod created again."""
    need = 60 + 3 * gib + reserve
    if ctx.remaining() < need:
        R["cold_uncached"] = {"skipped": f"not run: {ctx.remaining():.0f} s before the deadline, {need} s needed"}
        return
    cs.delete(ctx, name, grace=0)
    ctx.pods.wait_for(lambda l: name not in l, 60, f"{name} deleted")
    ctx.node.wait(lambda: server_pid(name) is None, 60, f"{name}'s process gone")
    subprocess.run(["sync"], check=True, timeout=120)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    t_create = cs.create(ctx, model_pod(ctx, name, gib, port, True))
    t_ok, body, others = until_ok(ctx, host, 420, name)
    C = {"cold_start_s": round(t_ok - t_create, 2), "split_s": cold_split(ctx, name, t_create, t_ok),
         "server_ready_line": server_ready_line(ctx, name) or {}, "same_answer": body.get("text") == R.get("answer")}
    wake = R.get("wake_median_s")
    C["ratio"] = round(C["cold_start_s"] / wake, 1) if wake else None
    R["cold_uncached"] = C
    ctx.log(f"s7 {gib} GiB: cold start without the page cache {C['cold_start_s']} s {C['split_s']}")
    ctx.check(SC, f"{gib} GiB: cold start with the page cache dropped (weights, PyTorch read from disk): "
                  "wake from suspension >= 10x faster", C["ratio"] is not None and C["ratio"] >= 10,
              f"cold {C['cold_start_s']} s / wake {wake} s = {C['ratio']}x; server {C['server_ready_line']}")
