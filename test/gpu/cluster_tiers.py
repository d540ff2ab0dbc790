"""Scenario 8 of cluster_suite.py: a suspended PyTorch pod with GPUs spilled to the disk tier by
the agent's tier policy and restored from it (issue 23's GPU proof, disk tier).

The pod sleeps on disk (kybernate.io/sleep: Disk) and is put to sleep by hand, with the
GPUCheckpoint the activator would create (action Suspend, reason Idle): the policy spills it
whatever the mark (cluster_node.TIER_FLAGS). Its container is checkpointed with CRIU (its GPU
memory parked in host memory, so in the image), stored encrypted in the disk tier and stopped:
its process is gone and its host memory free. A Resume by hand opens the hold on the kubelet's
create, the shim restores the container from the image and the agent puts its GPU memory
back. The pod trains on: same process (PID in its namespace, token), every step once, losses
bit-identical to an uninterrupted run.
"""
import base64
import os
import time

import cluster_node
import cluster_scenarios as cs

KEY_SECRET = "kybernate-image-key"


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
    sc, M = "s8", ctx.gpu["memory_bytes"]
    R = ctx.R["scenarios"].setdefault(sc, {"title": "Storage tiers: a suspended GPU pod spilled to disk and restored"})
    reference = cs.ref(ctx, cs.S8_SEED, cs.S8_STEPS)
    ballast = 6
    R.update({"ballast_gib": ballast, "declared_gib": round(0.30 * M / cs.GIB, 1), "steps": cs.S8_STEPS,
              "tier_flags": cluster_node.TIER_FLAGS})
    if not ctx.node.api("GET", f"/api/v1/namespaces/{cs.NS}/secrets/{KEY_SECRET}", ok404=True):
        cs.create(ctx, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEY_SECRET, "namespace": cs.NS},
                        "data": {"key": base64.b64encode(os.urandom(32)).decode()}}, plural="secrets")
    pod = cs.gpu_pod(ctx, "spill", "kybernate-batch-low", int(0.30 * M), ballast, cs.S8_STEPS, cs.S8_SEED, sc,
                     start_file="spill.starts", restart="OnFailure")
    pod["metadata"]["annotations"]["kybernate.io/sleep"] = "Disk"
    cs.create(ctx, pod)
    cs.wait_steps(ctx, sc, "spill", 150, 240)
    pid = cs.host_pid("spill")
    rss_running = cs.rss(pid)

    t_sleep = cs.create(ctx, checkpoint("spill-sleep", "spill", "Suspend", "Idle"), "gpucheckpoints", "/apis/kybernate.io/v1alpha1")
    susp = cs.wait_cp(ctx, "spill", "Suspend", 180)
    rss_parked, avail_parked = cs.rss(pid), cs.mem_available()
    ev = wait_event(ctx, "spill", "SpilledToDisk", 300)
    t_spilled = time.time()
    ctx.node.wait(lambda: not os.path.exists(f"/proc/{pid}") or cs.proc_state(pid) in ("Z", "X"), 60, "the spilled process gone")
    try:
        ctx.node.wait(lambda: cs.mem_available() - avail_parked >= 0.8 * (rss_parked or 0), 30, "its host memory back", every=0.2)
    except TimeoutError:
        pass
    avail_spilled = cs.mem_available()
    storage = ((cs.checkpoints(ctx, "spill", "Suspend") or [{}])[-1].get("status") or {}).get("storage") or {}
    R["sleep"] = {"suspend": cs.moved(susp), "spilled_after_sleep_s": round(t_spilled - t_sleep, 1), "event": ev.get("message"),
                  "host_pid": pid, "rss_running_gib": cs.gib(rss_running), "rss_parked_gib": cs.gib(rss_parked),
                  "mem_available_freed_gib": cs.gib(avail_spilled - avail_parked), "storage": storage}
    ctx.check(sc, "the sleeping pod's container is spilled to disk by the policy (Event SpilledToDisk naming its parked GPU memory), "
                  "its process ended and its host memory freed",
              "parked GPU memory" in (ev.get("message") or "") and cs.host_pid("spill") is None
              and avail_spilled - avail_parked >= 0.8 * (rss_parked or 0),
              f"{ev.get('message', '')[:300]}; RSS {cs.gib(rss_parked)} GiB parked, MemAvailable +{cs.gib(avail_spilled - avail_parked)} GiB")
    ctx.check(sc, "its Suspend's status.storage says Disk", storage.get("tier") == "Disk", str(storage))

    t_wake = cs.create(ctx, checkpoint("spill-wake", "spill", "Resume", "Manual"), "gpucheckpoints", "/apis/kybernate.io/v1alpha1")
    res = cs.wait_cp(ctx, "spill", "Resume", 300, after=t_wake - 1)
    t_resumed = time.time()
    R["wake"] = {"resume": cs.moved(res), "resume_s": round(t_resumed - t_wake, 1),
                 "restored_event": (events(ctx, "spill", "RestoredFromTier") or [{}])[-1].get("message")}
    ctx.check(sc, "a Resume restores it from disk (the kubelet's held create, the shim's CRIU restore, the agent's driver restore)",
              res.get("status", {}).get("phase") == "Succeeded", f"{R['wake']['resume']}; {t_resumed - t_wake:.1f} s")
    ctx.pods.wait_for(lambda l: cs.phase(l.get("spill")) in ("Succeeded", "Failed"), 300, "spill done")
    o = ctx.pods.latest.get("spill")
    R["restart_count"] = ((o.get("status", {}).get("containerStatuses") or [{}])[0]).get("restartCount")
    ctx.check(sc, "the restored pod trains to the end", cs.phase(o) == "Succeeded", cs.pod_why(o))
    cs.report_losses(ctx, sc, "spill", cs.steps_file(ctx, sc, "spill"), reference)
    cs.cleanup(ctx)
