"""Scenarios 8 and 9 of cluster_suite.py: a suspended PyTorch pod with GPUs spilled to the disk
tier by the agent's tier policy and restored from it (8), and the same pod's image moved on to
object storage, a real SeaweedFS, and restored from there (9): issue 23's GPU proof.

The pod sleeps on disk (kybernate.io/sleep: Disk) and is put to sleep by hand, with the
GPUCheckpoint the activator would create (action Suspend, reason Idle): the policy spills it
whatever the mark (cluster_node.TIER_FLAGS). Its container is checkpointed with CRIU (its GPU
memory parked in host memory, so in the image), stored encrypted in the disk tier and stopped:
its process is gone and its host memory free. A Resume by hand opens the hold on the kubelet's
create, the shim restores the container from the image and the agent puts its GPU memory
back. The pod trains on: same process (PID in its namespace, token), every step once, losses
bit-identical to an uninterrupted run.

Scenario 9 starts SeaweedFS (weed, carried by test/gpu/pack-weed.sh in a call before; the
project's hack/seaweedfs-up.sh) on the host, gives the agent its Secret with
--object-store-secret and --disk-tier-idle=5s (a rollout of the DaemonSet), and waits after the
spill for UploadedToObjectStore: the image leaves the disk, and the Resume fetches it from
SeaweedFS, checks and decrypts it before the shim restores the container.
"""
import base64
import os
import subprocess
import time

import cluster_node
import cluster_scenarios as cs

KEY_SECRET = "kybernate-image-key"
STORE_SECRET = "kybernate-object-store"
SYSTEM_NS = "kybernate-system"
# Scenario 9's agent: the object store, and images moved there after 5 s on disk.
OBJECT_STORE_FLAGS = {"--object-store-secret": f"{SYSTEM_NS}/{STORE_SECRET}", "--disk-tier-idle": "5s"}


def events(ctx, pod, reason):
    """The Events of REASON on POD, oldest first."""
    q = f"fieldSelector=involvedObject.name={pod},reason={reason}"
    items = ctx.node.api("GET", f"/api/v1/namespaces/{cs.NS}/events?{q}").get("items") or []
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def wait_event(ctx, pod, reason, timeout):
    end = time.time() + min(timeout, max(1, ctx.remaining()))
    while time.time() < end:
        ev = events(ctx, pod, reason)
        if ev:
            return ev[-1]
        failed = events(ctx, pod, "TierMoveFailed")
        if failed:
            raise RuntimeError(f"{pod}: TierMoveFailed: {failed[-1].get('message')}")
        time.sleep(0.5)
    raise TimeoutError(f"{pod}: no {reason} Event within {timeout}s ({cs.pod_why(ctx.pods.latest.get(pod))})")


def checkpoint(name, pod, action, reason):
    return {"apiVersion": "kybernate.io/v1alpha1", "kind": "GPUCheckpoint", "metadata": {"name": name, "namespace": cs.NS},
            "spec": {"podName": pod, "action": action, "reason": reason}}


def s8(ctx):
    R = ctx.R["scenarios"].setdefault("s8", {"title": "Storage tiers: a suspended GPU pod spilled to disk and restored"})
    spill_and_restore(ctx, "s8", "spill", R)


def s9(ctx):
    R = ctx.R["scenarios"].setdefault("s9", {"title": "Storage tiers: a suspended GPU pod spilled to disk, moved to object storage "
                                                      "(SeaweedFS) and restored from there"})
    with_object_store(ctx, "s9", R, lambda: spill_and_restore(ctx, "s9", "s3spill", R, object_store=True))


def rehearse(ctx):
    """No GPU: scenario 9's setup (SeaweedFS up, the agent rolled out with it, SeaweedFS down)."""
    R = ctx.R["scenarios"].setdefault("s9", {"title": "Object store setup (rehearsal without a GPU)"})
    with_object_store(ctx, "s9", R, lambda: ctx.check("s9", "SeaweedFS up and the agent rolled out with --object-store-secret",
                                                      True, f"SeaweedFS up in {R['object_store_up_s']} s"))


def with_object_store(ctx, sc, R, run):
    """RUN with SeaweedFS started on the host (hack/seaweedfs-up.sh) and the agent using it."""
    weed = os.path.join(ctx.node.bin, "weed")
    if not os.access(weed, os.X_OK):
        ctx.check(sc, "SeaweedFS is on the machine", False,
                  f"no {weed}: carry .gpubin/weed (test/gpu/pack-weed.sh) in a call just before, on the same machine")
        return
    store = ctx.node.p("seaweedfs")
    env = dict(os.environ, KYBERNATE_BIN_DIR=ctx.node.bin, SEAWEEDFS_IP="127.0.0.1", KUBE_VERSION="unused")
    hack = os.path.join(ctx.node.repo, "hack")
    t = time.time()
    subprocess.run(["bash", f"{hack}/seaweedfs-up.sh", store], env=env, check=True, timeout=180)
    try:
        R["object_store_up_s"] = round(time.time() - t, 1)
        object_store_agent(ctx, dict(line.split("=", 1) for line in open(f"{store}/s3.env").read().split()))
        R["agent_flags"] = OBJECT_STORE_FLAGS
        run()
    finally:
        subprocess.run(["bash", f"{hack}/seaweedfs-down.sh", store], env=env, timeout=60)


def object_store_agent(ctx, s3):
    """The object store's Secret, and the agent rolled out with OBJECT_STORE_FLAGS."""
    ctx.node.api("POST", f"/api/v1/namespaces/{SYSTEM_NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": STORE_SECRET, "namespace": SYSTEM_NS},
        "stringData": {"endpoint": s3["S3_ENDPOINT"], "bucket": s3["S3_BUCKET"], "region": s3["S3_REGION"], "pathStyle": "true",
                       "tls": "false", "accessKeyID": s3["S3_ACCESS_KEY_ID"], "secretAccessKey": s3["S3_SECRET_ACCESS_KEY"]}})
    path = f"/apis/apps/v1/namespaces/{SYSTEM_NS}/daemonsets/kybernate-agent"
    ds = ctx.node.api("GET", path)
    command = ds["spec"]["template"]["spec"]["containers"][0]["command"]
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/command",
              "value": cluster_node.with_flags(command, OBJECT_STORE_FLAGS)}]
    ctx.node.api("PATCH", path, patch, ctype="application/json-patch+json")

    def rolled():
        d = ctx.node.api("GET", path)
        st = d.get("status", {})
        return (st.get("observedGeneration") == d["metadata"]["generation"] and st.get("updatedNumberScheduled") == 1
                and st.get("numberReady") == 1 and st.get("numberUnavailable", 0) == 0)
    ctx.node.wait(rolled, 120, "the agent rolled out with the object store")


def spill_and_restore(ctx, sc, name, R, object_store=False):
    """A PyTorch pod that sleeps on disk, put to sleep and spilled by the policy; with
    OBJECT_STORE its image moves on to object storage; a Resume restores it from where it is."""
    M = ctx.gpu["memory_bytes"]
    reference = cs.ref(ctx, cs.S8_SEED, cs.S8_STEPS)
    ballast = 8  # the issue asks for the time to resume an 8 GiB pod from each tier
    R.update({"ballast_gib": ballast, "declared_gib": round(0.30 * M / cs.GIB, 1), "steps": cs.S8_STEPS,
              "tier_flags": cluster_node.TIER_FLAGS})
    if not ctx.node.api("GET", f"/api/v1/namespaces/{cs.NS}/secrets/{KEY_SECRET}", ok404=True):
        cs.create(ctx, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEY_SECRET, "namespace": cs.NS},
                        "data": {"key": base64.b64encode(os.urandom(32)).decode()}}, plural="secrets")
    pod = cs.gpu_pod(ctx, name, "kybernate-batch-low", int(0.30 * M), ballast, cs.S8_STEPS, cs.S8_SEED, sc,
                     start_file=f"{name}.starts", restart="OnFailure")
    pod["metadata"]["annotations"]["kybernate.io/sleep"] = "Disk"
    cs.create(ctx, pod)
    cs.wait_steps(ctx, sc, name, 150, 240)
    pid = cs.host_pid(name)
    rss_running = cs.rss(pid)

    t_sleep = cs.create(ctx, checkpoint(f"{name}-sleep", name, "Suspend", "Idle"), "gpucheckpoints", "/apis/kybernate.io/v1alpha1")
    susp = cs.wait_cp(ctx, name, "Suspend", 180)
    rss_parked, avail_parked = cs.rss(pid), cs.mem_available()
    ev = wait_event(ctx, name, "SpilledToDisk", 300)
    t_spilled = time.time()
    ctx.node.wait(lambda: not os.path.exists(f"/proc/{pid}") or cs.proc_state(pid) in ("Z", "X"), 60, "the spilled process gone")
    try:
        ctx.node.wait(lambda: cs.mem_available() - avail_parked >= 0.8 * (rss_parked or 0), 30, "its host memory back", every=0.2)
    except TimeoutError:
        pass
    avail_spilled = cs.mem_available()
    storage = suspend_storage(ctx, name)
    R["sleep"] = {"suspend": cs.moved(susp), "spilled_after_sleep_s": round(t_spilled - t_sleep, 1), "event": ev.get("message"),
                  "host_pid": pid, "rss_running_gib": cs.gib(rss_running), "rss_parked_gib": cs.gib(rss_parked),
                  "mem_available_freed_gib": cs.gib(avail_spilled - avail_parked), "storage": storage}
    ctx.check(sc, "the sleeping pod's container is spilled to disk by the policy (Event SpilledToDisk naming its parked GPU memory), "
                  "its process ended and its host memory freed",
              "parked GPU memory" in (ev.get("message") or "") and cs.host_pid(name) is None
              and avail_spilled - avail_parked >= 0.8 * (rss_parked or 0),
              f"{ev.get('message', '')[:300]}; RSS {cs.gib(rss_parked)} GiB parked, MemAvailable +{cs.gib(avail_spilled - avail_parked)} GiB")
    if object_store:
        up = wait_event(ctx, name, "UploadedToObjectStore", 600)
        t_up = time.time()
        try:
            storage = ctx.node.wait(lambda: (suspend_storage(ctx, name).get("tier") == "ObjectStore") and suspend_storage(ctx, name),
                                    60, "status.storage ObjectStore")
        except TimeoutError:
            storage = suspend_storage(ctx, name)
        on_disk = [d for d in os.listdir(ctx.node.p("tiers", "images", cs.NS)) if d.startswith(f"{name}-")] \
            if os.path.isdir(ctx.node.p("tiers", "images", cs.NS)) else []
        R["upload"] = {"uploaded_after_spill_s": round(t_up - t_spilled, 1), "event": up.get("message"), "storage": storage,
                       "left_on_disk": on_disk}
        ctx.check(sc, "the image moves on to the object store after its idle time on disk (Event UploadedToObjectStore), "
                      "status.storage says ObjectStore and the disk copy is gone",
                  storage.get("tier") == "ObjectStore" and not on_disk, f"{up.get('message', '')[:300]}; {storage}; on disk {on_disk}")
    else:
        ctx.check(sc, "its Suspend's status.storage says Disk", storage.get("tier") == "Disk", str(storage))

    t_wake = cs.create(ctx, checkpoint(f"{name}-wake", name, "Resume", "Manual"), "gpucheckpoints", "/apis/kybernate.io/v1alpha1")
    res = cs.wait_cp(ctx, name, "Resume", 300, after=t_wake - 1)
    t_resumed = time.time()
    restored = (events(ctx, name, "RestoredFromTier") or [{}])[-1].get("message") or ""
    R["wake"] = {"resume": cs.moved(res), "resume_s": round(t_resumed - t_wake, 1), "restored_event": restored}
    tier = "ObjectStore" if object_store else "Disk"
    ctx.check(sc, f"a Resume restores it from {tier} (the kubelet's held create, the shim's CRIU restore, the agent's driver restore)",
              res.get("status", {}).get("phase") == "Succeeded" and restored.startswith(f"Restored from {tier}"),
              f"{R['wake']['resume']}; {t_resumed - t_wake:.1f} s; {restored[:200]}")
    ctx.pods.wait_for(lambda l: cs.phase(l.get(name)) in ("Succeeded", "Failed"), 300, f"{name} done")
    o = ctx.pods.latest.get(name)
    R["restart_count"] = ((o.get("status", {}).get("containerStatuses") or [{}])[0]).get("restartCount")
    ctx.check(sc, "the restored pod trains to the end", cs.phase(o) == "Succeeded", cs.pod_why(o))
    cs.report_losses(ctx, sc, name, cs.steps_file(ctx, sc, name), reference)
    cs.cleanup(ctx)


def suspend_storage(ctx, name):
    """status.storage of the pod's latest Suspend."""
    return ((cs.checkpoints(ctx, name, "Suspend") or [{}])[-1].get("status") or {}).get("storage") or {}
