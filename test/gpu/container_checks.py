"""The checks of container_suite.py, derived from one run's measured JSON (results.json): for every
experiment, the outcome the suite expects beside the one it measured. A check whose figure an
older run did not record is left out rather than failed (e.g. the original container's file
length, recorded since the restore-versus-restart checks). container_suite.py exits non-zero
when one fails."""
import functools

import report_common as rc
from report_common import get

SHIM_DEFAULT_DEVICE_NODES = "All"  # shim/README.md: the only exposure a resume onto another GPU works with


def checks(R):
    """Every check of one run (the results object container_suite.py writes)."""
    out = []
    add = functools.partial(rc.check, out)
    gpus = [g.get("uuid") for g in get(R, "setup", "gpus") or []]
    add("setup", "GPUs (nvidia-smi)", "2 or more", len(gpus), len(gpus) >= 2)
    add("run", "ran to the end", "no error", f"errors: {len(R.get('errors') or [])}", not R.get("errors"))
    for name, e in (R.get("experiments") or {}).items():
        one = functools.partial(add, name)
        if e.get("exception"):
            one("ran without an exception", "no exception", e["exception"], False)
        for prefix, fn in CHECKERS:
            if name.startswith(prefix):
                fn(one, e, gpus)
                break
    return out


def agent_call(one, what, r):
    """A call of agentctl (or ctr-run) succeeded: no error in its answer."""
    err = (r or {}).get("error") if r else "not called"
    one(what, "no error", err or "ok", not err)
    return not err


def on_gpus(after):
    return sorted({a.get("uuid") for a in (after or {}).get("apps") or []})


def losses(one, e):
    c = e.get("compare")
    if c is None:
        one("losses compared with the uninterrupted run", "compared", "not compared", False)
        return
    one("losses bit-identical to the uninterrupted run, one process started once", "identical", compare_text(c),
        c.get("identical") is True)
    one("the workload finished (done line, ballast checksum)", "True", e.get("finished"), e.get("finished") is True)


def compare_text(c):
    n = c.get("steps_compared") or 0
    same = n - (c.get("n_missing") or 0) - (c.get("n_different") or 0)
    twice = c.get("steps_twice")
    started = c.get("one_process_started_once")
    return (f"{same} of {n} identical, missing {c.get('n_missing')}, different {c.get('n_different')}, "
            f"written twice {rc.DASH if twice is None else len(twice)}, one process started once "
            f"{rc.DASH if started is None else started}")


def _reference(one, e, gpus):
    one("created (ctr-run)", "rc 0", e.get("rc"), e.get("rc") == 0)
    one("finished uninterrupted", "True", e.get("finished"), e.get("finished") is True)
    one("ballast checksum at the end", "True", get(e, "done", "ballast_ok"), get(e, "done", "ballast_ok") is True)


def _suspended(one, e):
    """The container was suspended: gone from every GPU, no training step, pod Suspended."""
    if not agent_call(one, "suspend (agent gRPC)", e.get("suspend")):
        return
    apps = get(e, "during", "apps")
    one("process gone from the GPUs while suspended (nvidia-smi compute apps)", "[]", apps, apps == [])
    steps = get(e, "during", "steps_during_hold")
    one("training steps during the hold", "0", steps, steps == 0)
    state = get(e, "during", "pod", "kybernate.io/state")
    one("pod kybernate.io/state while suspended", "Suspended", state, state == "Suspended")


def _in_place(one, e, gpus):
    if not agent_call(one, "created (ctr-run)", e.get("create")):
        return
    _suspended(one, e)
    if agent_call(one, "resume in place (agent gRPC)", e.get("resume")):
        one("process back on its GPU (GPU0)", gpus[:1], on_gpus(e.get("after")), on_gpus(e.get("after")) == gpus[:1])
    losses(one, e)


def _remap(one, e, gpus):
    if not agent_call(one, "created (ctr-run)", e.get("create")):
        return
    _suspended(one, e)
    mode, err = e.get("deviceNodes"), get(e, "resume", "error")
    target = gpus[1:2]
    if mode == SHIM_DEFAULT_DEVICE_NODES or not err:
        agent_call(one, f"resume onto GPU1 with deviceNodes {mode}", e.get("resume"))
        one("process on GPU1 afterwards", target, on_gpus(e.get("after")), on_gpus(e.get("after")) == target)
    else:
        # Refused by the driver is an outcome the suite records; the rollback must hold.
        back = e.get("resume_back_to_gpu0")
        one(f"resume onto GPU1 with deviceNodes {mode} refused, rolled back to Suspended",
            "'rolled back' in the error", err, "rolled back" in err)
        agent_call(one, "then resumed onto its own GPU", back)
    losses(one, e)


def _checkpoint_restore(one, e, gpus):
    if not agent_call(one, "created (ctr-run)", e.get("create")):
        return
    if not agent_call(one, "checkpoint (agent Checkpoint RPC)", e.get("checkpoint")):
        return
    alive = get(e, "after_checkpoint", "pids_alive")
    one("original process gone after the checkpoint", "[]", alive, alive == [])
    if not agent_call(one, "restore into a new container on GPU1 (ctr-run, kybernate.io/restore-from)", e.get("restore")):
        return
    one("restored process on GPU1", gpus[1:2], on_gpus(e.get("after_restore")), on_gpus(e.get("after_restore")) == gpus[1:2])
    if e.get("manageCgroupsMode") == "ignore":
        cg, cid = get(e, "after_restore", "cgroup") or "", get(e, "restore", "cid") or "?"
        one("restored process in the new container's cgroup", f"…/{cid[:12]}…", cg, cid in cg)
    if "original_lines_at_checkpoint" in e:
        a, b = e.get("original_lines_at_checkpoint"), e.get("original_lines_after")
        one("the original container's file got no line after the checkpoint", f"{a} lines", f"{b} lines", a == b)
    losses(one, e)


CHECKERS = (("0-reference", _reference), ("1-", _in_place), ("2-remap-", _remap), ("3", _checkpoint_restore))
