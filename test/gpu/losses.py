"""Reads and checks what train.py writes: one JSON line per step with the loss (float.hex()), the
writer's PID, its per-process random token and its start counter.

A suspended and resumed (or checkpointed and restored) process is the same process: one
token, one start, every step once, the losses of an uninterrupted run. A restarted one has a
new token and a higher start count and writes steps again. Steps are kept as a list in the
order written, never in a dict, so a step written twice is seen.
"""
import json


def read(path):
    """{"steps": [line, ...] in file order, "started": [...], "done": [...], "bad": n}."""
    out = {"steps": [], "started": [], "done": [], "bad": 0}
    try:
        f = open(path)
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                out["bad"] += 1
                continue
            if "step" in d:
                out["steps"].append(d)
            elif d.get("started"):
                out["started"].append(d)
            elif d.get("done"):
                out["done"].append(d)
    return out


def reference_losses(path):
    """The losses of an uninterrupted run, by step index (its steps must be 0..n-1 once each)."""
    r = read(path)
    idx = [s["step"] for s in r["steps"]]
    if idx != list(range(len(idx))):
        raise ValueError(f"{path}: the reference run's steps are not 0..{len(idx) - 1} once each")
    return [s["loss"] for s in r["steps"]]


def check(path, ref, restored_ok=True, want_done=True):
    """Checks one run of the workload in PATH against the reference losses REF.

    Returns a dict of figures and "failures", a list of what does not hold: more than one
    start, token or PID; a step written twice or missing; a loss that differs; a ballast
    checksum that changed; no "done" line when WANT_DONE.
    """
    r = read(path)
    steps = r["steps"]
    idx = [s["step"] for s in steps]
    seen, dup = set(), []
    for i in idx:
        if i in seen:
            dup.append(i)
        seen.add(i)
    tokens = sorted({s.get("token") for s in steps + r["started"] + r["done"]} - {None})
    pids = sorted({s.get("pid") for s in steps + r["started"] + r["done"]} - {None})
    starts = sorted({s.get("start") for s in steps + r["started"] + r["done"]} - {None})
    cmp = min(len(idx), len(ref))
    differ = [s["step"] for s in steps if s["step"] < len(ref) and s["loss"] != ref[s["step"]]]
    out = {"file": path, "steps_written": len(idx), "distinct_steps": len(seen), "steps_twice": dup[:20],
           "first_step": idx[0] if idx else None, "last_step": idx[-1] if idx else None,
           "in_order": idx == sorted(idx), "tokens": tokens, "pids": pids, "starts": starts,
           "started_lines": len(r["started"]), "compared": cmp, "losses_differ": differ[:20],
           "beyond_reference": sum(1 for i in idx if i >= len(ref)),
           "ballast_ok": [d.get("ballast_ok") for d in r["done"]], "bad_lines": r["bad"]}
    f = []
    if len(r["started"]) != 1 or len(tokens) != 1 or len(pids) != 1 or len(starts) != 1:
        f.append(f"{len(r['started'])} start lines, tokens {tokens}, pids {pids}, start counters {starts}: want one process started once")
    if dup:
        f.append(f"steps written twice: {dup[:10]}")
    if idx and idx != list(range(idx[0], idx[0] + len(idx))):
        f.append("steps not consecutive")
    if idx and idx[0] != 0:
        f.append(f"first step {idx[0]}, want 0")
    if differ:
        f.append(f"{len(differ)} losses differ from the reference (first steps {differ[:5]})")
    if out["beyond_reference"]:
        f.append(f"{out['beyond_reference']} steps beyond the reference's {len(ref)}: not compared")
    if want_done and (len(r["done"]) != 1 or r["done"][0].get("ballast_ok") is not True):
        f.append(f"done lines {r['done'][:2]}: want one with ballast_ok true")
    if r["bad"]:
        f.append(f"{r['bad']} lines that are not JSON")
    out["failures"] = f
    return out


def resident_intervals(path, gap):
    """The intervals [t0, t1] in which the run wrote steps with no pause longer than GAP seconds:
    the times its memory was on the GPU and it trained."""
    ts = [s["t"] for s in read(path)["steps"]]
    out = []
    for t in ts:
        if out and t - out[-1][1] <= gap:
            out[-1][1] = t
        else:
            out.append([t, t])
    return out
