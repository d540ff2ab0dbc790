"""Writes the results Markdown of agent_bench.py from its measured JSON (results.json); nothing in it
is typed by hand. The issue's goals are checks (suspend >= 1.5x and resume >= 1.3x the host
default's rates with the agent's THP window, gRPC overhead <= 5% over the raw driver call), next to
what the bench itself must show (the window opened and closed, THP put back, concurrent suspends
in flight at once, data intact, every phase run).

`python3 agent_bench.py --report-from results.json > bench-results.md` renders it again."""
import re
import statistics

import report_common as rc

GIB = 1 << 30
SUSPEND_GOAL, RESUME_GOAL, OVERHEAD_GOAL = 1.5, 1.3, 0.05


def dur_s(d):
    """'1.234s' (protojson Duration) -> seconds; None stays None."""
    if d is None:
        return None
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(m.group(1)) * units[m.group(2)] for m in re.finditer(r"([0-9.]+)(h|ms|us|µs|ns|m|s)", str(d)))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x, fmt="{:.2f}"):
    return rc.DASH if x is None else fmt.format(x)


def gbps(op):
    return op["bytes"] / op["call_s"] / 1e9 if op and op.get("bytes") and op.get("call_s") else None


def ratio(a, b):
    return a / b if a is not None and b else None


# ----------------------------------------------------------------------------------- figures


def by_size(R, key):
    """{gib: [cycles]} of a variant."""
    out = {}
    for c in rc.get(R, "variants", key, "cycles") or []:
        out.setdefault(c["gib"], []).append(c)
    return out


def variant_rates(R, key, gib):
    cs = by_size(R, key).get(gib) or []
    return med([gbps(c["suspend"]) for c in cs]), med([gbps(c["resume"]) for c in cs])


def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None, None
    m = statistics.median(xs)
    return m, min(xs), max(xs), (max(xs) - min(xs)) / m * 100 if m else None


def paths_of(cycles, path, op, field="call_s"):
    return [c[op][field] for c in cycles if c["via"] == path and c.get(op)]


def step_of(cycles, path, op, step):
    return [(c[op].get("steps_s") or {}).get(step) for c in cycles if c["via"] == path and c.get(op)]


def overlap(calls):
    """All calls in flight at once: the last start before the first end."""
    return bool(calls) and max(c["t0"] for c in calls) < min(c["t1"] for c in calls)


def engine_overlap(calls):
    """The engine's operations (from the agent's log: end and duration) all ran at one moment;
    None where the log lines are missing."""
    if not calls or any(c.get("engine_end") is None or c.get("engine_s") is None for c in calls):
        return None
    return max(c["engine_end"] - c["engine_s"] for c in calls) < min(c["engine_end"] for c in calls)


def aggregate(calls):
    span = max(c["t1"] for c in calls) - min(c["t0"] for c in calls)
    return sum(c["bytes"] for c in calls) / span / 1e9 if span > 0 else None


# ------------------------------------------------------------------------------------ checks


def checks(R):
    cs = []
    sizes = sorted({c["gib"] for k in ("a", "b") for c in rc.get(R, "variants", k, "cycles") or []})
    for g in sizes:
        (sa, ra), (sb, rb) = variant_rates(R, "a", g), variant_rates(R, "b", g)
        rc.check(cs, "1 THP window", f"{g:g} GiB suspend, window vs default", f">= {SUSPEND_GOAL}x",
                 f"{f(ratio(sb, sa))}x ({f(sb)} / {f(sa)} GB/s)", (ratio(sb, sa) or 0) >= SUSPEND_GOAL)
        rc.check(cs, "1 THP window", f"{g:g} GiB resume, window vs default", f">= {RESUME_GOAL}x",
                 f"{f(ratio(rb, ra))}x ({f(rb)} / {f(ra)} GB/s)", (ratio(rb, ra) or 0) >= RESUME_GOAL)
    if not sizes:
        rc.check(cs, "1 THP window", "variants a and b measured", "both", "none", False)
    orig = rc.get(R, "thp", "original", "enabled")
    for key in [k for k in R.get("variants", {}) if k.startswith("b")]:
        for c in R["variants"][key]["cycles"]:
            seen = c.get("thp_during_suspend") or []
            rc.check(cs, "1 THP window", f"{key} {c['gib']:g} GiB: enabled during / after the suspend",
                     f"always / {orig}", f"{seen} / {c.get('thp_after_suspend')}",
                     "always" in seen and c.get("thp_after_suspend") == orig)
    end = rc.get(R, "thp", "at_end")
    rc.check(cs, "host", "THP settings at the end", rc.get(R, "thp", "original"), end, end == rc.get(R, "thp", "original"))
    for key, v in (R.get("concurrency") or {}).items():
        for run in v["runs"]:
            if run["k"] > 1:
                rc.check(cs, "2 concurrency", f"{key}: k={run['k']} suspends in flight at once", "yes",
                         "yes" if overlap(run["suspend"]) else "NO", overlap(run["suspend"]))
                eo = engine_overlap(run["suspend"])
                rc.check(cs, "2 concurrency", f"{key}: k={run['k']} suspends inside the engine at once (agent log)", "yes",
                         {True: "yes", False: "NO", None: "no log lines"}[eo], eo is True)
    ov = rc.get(R, "overhead", "cycles") or []
    for op in ("suspend", "resume"):
        g, r = med(paths_of(ov, "grpc", op)), med(paths_of(ov, "raw", op))
        o = ratio(g, r)
        rc.check(cs, "3 overhead", f"{op}: gRPC over raw (median of {len(paths_of(ov, 'grpc', op))})", f"<= {OVERHEAD_GOAL:.0%}",
                 rc.DASH if o is None else f"{(o - 1) * 100:+.1f}% ({f(g, '{:.3f}')} / {f(r, '{:.3f}')} s)", o is not None and o - 1 <= OVERHEAD_GOAL)
    r1 = rc.get(R, "restore_1gib", "cycles") or []
    a, r = med(step_of(r1, "grpc", "resume", "Restore")), med(step_of(r1, "raw", "resume", "Restore"))
    o = ratio(a, r)
    rc.check(cs, "6 restore 1 GiB", "the driver's restore in the agent vs in a fresh process", f"<= +{OVERHEAD_GOAL:.0%}",
             rc.DASH if o is None else f"{(o - 1) * 100:+.1f}% ({f(a, '{:.3f}')} / {f(r, '{:.3f}')} s)", o is not None and o - 1 <= OVERHEAD_GOAL)
    n = sum(len(v.get("cycles") or []) for v in R.get("variants", {}).values()) + len(ov) + len(r1)
    rc.check(cs, "all", "every phase ran before the deadline", "nothing skipped", R.get("skipped") or "nothing skipped", not R.get("skipped"))
    rc.check(cs, "all", "cycles measured, checksums intact after each", "> 0", n, n > 0)
    return cs


# ------------------------------------------------------------------------------------ report


def head(R):
    m = R.get("meta", {})
    L = ["# kybernate-agent GPU bench: THP window, concurrency, gRPC overhead, 1 GiB restore", ""]
    L += [f"- date: {m.get('date')}; duration {m.get('duration_s')} s (deadline {m.get('deadline_s')} s)",
          f"- GPU: {m.get('gpu')}; driver {m.get('driver', rc.DASH)}; persistence mode {m.get('persistence_mode', rc.DASH)}",
          f"- host: {m.get('host')}; memory {m.get('mem_total_gib', rc.DASH)} GiB; PyTorch {m.get('torch', rc.DASH)}",
          f"- THP at start: {rc.cell(rc.get(R, 'thp', 'settings_at_start'))}{' (FAKE folder: dry run)' if rc.get(R, 'thp', 'fake') else ''}",
          f"- command: `agent_bench.py {m.get('command', '')}`", ""]
    return L


def variants(R):
    L = ["## 1. Rates per THP variant (through the agent's gRPC)", "",
         "Rates are the bytes the agent moved (the process's NVML footprint) over the gRPC call's time. Faults, CPU and "
         "AnonHugePages are the target process's; `thp_fault_alloc` / `thp_fault_fallback` / khugepaged's `pages_collapsed` "
         "are the node's during the suspend.", "",
         "| variant | GiB | cycle | bytes | suspend s | suspend GB/s | checkpoint step GB/s | resume s | resume GB/s | minor faults (suspend) | target CPU s | AnonHugePages parked GiB | thp_fault_alloc / fallback | khugepaged collapsed |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, v in (R.get("variants") or {}).items():
        n = {}
        for c in v["cycles"]:
            i = n[c["gib"]] = n.get(c["gib"], 0) + 1
            s, r = c["suspend"], c["resume"]
            ck = (s.get("steps_s") or {}).get("Checkpoint")
            vm = c.get("vmstat_suspend") or {}
            L.append(f"| {key}: {v['what']} | {c['gib']:g} | {i} | {s['bytes']} | {f(s['call_s'], '{:.3f}')} | {f(gbps(s))} | "
                     f"{f(s['bytes'] / ck / 1e9 if ck else None)} | {f(r['call_s'], '{:.3f}')} | {f(gbps(r))} | "
                     f"{rc.v(rc.get(c, 'target_suspend', 'minflt'))} | {f(rc.get(c, 'target_suspend', 'cpu_s'))} | "
                     f"{f((rc.get(c, 'parked', 'anon_huge') or 0) / GIB)} | {vm.get('thp_fault_alloc', 0)} / {vm.get('thp_fault_fallback', 0)} | "
                     f"{(c.get('khugepaged_suspend') or {}).get('pages_collapsed', 0)} |")
    L += ["", "| size | suspend GB/s a / b / c | b/a | c/a | resume GB/s a / b / c | b/a | c/a |", "|---|---|---|---|---|---|---|"]
    sizes = sorted({c["gib"] for v in (R.get("variants") or {}).values() for c in v["cycles"]})
    for g in sizes:
        (sa, ra), (sb, rb), (sc, rc_) = (variant_rates(R, k, g) for k in ("a", "b", "c"))
        L.append(f"| {g:g} GiB | {f(sa)} / {f(sb)} / {f(sc)} | {f(ratio(sb, sa))} | {f(ratio(sc, sa))} | "
                 f"{f(ra)} / {f(rb)} / {f(rc_)} | {f(ratio(rb, ra))} | {f(ratio(rc_, ra))} |")
    L += ["", "Effect on other processes: a bystander maps and touches anonymous memory while the largest checkpoint runs.", "",
          "| variant | THP enabled then | during the checkpoint | mapped MiB | of it in huge pages MiB |", "|---|---|---|---|---|"]
    for key, v in (R.get("variants") or {}).items():
        for c in v["cycles"]:
            b = c.get("bystander")
            if b:
                during = {True: "yes", False: "NO (it had ended)"}.get(b.get("suspend_still_running"), rc.DASH)
                L.append(f"| {key} | {b.get('enabled_then')} | {during} | {b['mib']} | {b['anon_huge_mib']:.0f} |")
    return L + [""]


def concurrency(R):
    L = ["## 2. Concurrent suspends on one GPU (gRPC, all calls started together)", "",
         "| under | k | GiB each | bytes | suspend span s | aggregate suspend GB/s | per call s | engine's checkpoint step per call s | all in flight at once (calls / engine) | aggregate resume GB/s |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for key, v in (R.get("concurrency") or {}).items():
        for run in v["runs"]:
            s = run["suspend"]
            span = max(c["t1"] for c in s) - min(c["t0"] for c in s)
            L.append(f"| {key} | {run['k']} | {run['gib_each']:g} | {sum(c['bytes'] for c in s)} | {span:.3f} | {f(aggregate(s))} | "
                     f"{', '.join(f(c['call_s'], '{:.2f}') for c in s)} | "
                     f"{', '.join(f((c.get('steps_s') or {}).get('Checkpoint')) for c in s)} | "
                     f"{'yes' if overlap(s) else 'NO'} / {({True: 'yes', False: 'NO'}).get(engine_overlap(s), rc.DASH)} | {f(aggregate(run['resume']))} |")
    return L + [""]


def overhead(R):
    ov = rc.get(R, "overhead", "cycles") or []
    L = [f"## 3. gRPC against the raw driver call ({rc.get(R, 'overhead', 'gib') or 0:g} GiB process, interleaved)", "",
         "raw: `cuda-test suspend|resume --pid` (lock+checkpoint, restore+unlock as the driver returned them); gRPC: "
         "agentctl's call time (the agent's whole request: pod lookup, state patches, Events, restore guard, driver calls).", "",
         "| op | path | n | median s | min s | max s | spread % |", "|---|---|---|---|---|---|---|"]
    for op in ("suspend", "resume"):
        for path in ("raw", "grpc"):
            xs = paths_of(ov, path, op)
            m, lo, hi, sp = spread(xs)
            L.append(f"| {op} | {path} | {len(xs)} | {f(m, '{:.3f}')} | {f(lo, '{:.3f}')} | {f(hi, '{:.3f}')} | {f(sp, '{:.1f}')} |")
    return L + [""]


def restore_1gib(R):
    r1 = rc.get(R, "restore_1gib", "cycles") or []
    L = ["## 6. Resume of a 1 GiB pod, split", "",
         "Medians. `outside the driver` is the call's time less its Restore and Unlock steps: the agent's per-call work, "
         "of it `in the engine` (finding the processes, GPU list, restore guard's NVML read; from the agent's log line) and "
         "`API and gRPC` (the pod's GET, state patches, Events, the call itself). raw runs in a fresh process "
         "(its start and cuInit are in its process time, not in the call).", "",
         "| path | n | call s | Restore s | Unlock s | outside the driver s | of it in the engine s | of it API and gRPC s | process s |",
         "|---|---|---|---|---|---|---|---|---|"]
    for path in ("raw", "grpc"):
        calls = [c["resume"] for c in r1 if c["via"] == path]
        drv = [sum(v for v in (c.get("steps_s") or {}).values() if v) for c in calls]
        outside = [c["call_s"] - d for c, d in zip(calls, drv)]
        eng = [c["engine_s"] - d if c.get("engine_s") is not None else None for c, d in zip(calls, drv)]
        api = [c["call_s"] - c["engine_s"] if c.get("engine_s") is not None else None for c in calls]
        L.append(f"| {path} | {len(calls)} | {f(med([c['call_s'] for c in calls]), '{:.4f}')} | "
                 f"{f(med([(c.get('steps_s') or {}).get('Restore') for c in calls]), '{:.4f}')} | "
                 f"{f(med([(c.get('steps_s') or {}).get('Unlock') for c in calls]), '{:.4f}')} | {f(med(outside), '{:.4f}')} | "
                 f"{f(med(eng), '{:.4f}')} | {f(med(api), '{:.4f}')} | {f(med([c['process_s'] for c in calls]), '{:.4f}')} |")
    return L + [""]


def agents(R):
    L = ["## Agents started", ""]
    for a in R.get("agents") or []:
        L.append(f"- {a['label']}: up in {a.get('start_s', rc.DASH)} s; `{rc.cell(a['cmd'], 400)}`")
        for m in a.get("metrics") or []:
            L.append(f"  - `{m}`")
    return L + [""]


def render(R):
    cs = checks(R)
    L = head(R)
    L[2:2] = [rc.verdict_line(cs, R.get("errors")), ""]
    L += variants(R) + concurrency(R) + overhead(R) + restore_1gib(R) + agents(R)
    L += ["## Checks", ""] + rc.checks_table(cs) + [""]
    if R.get("skipped") or R.get("skipped_optional"):
        L += ["## Skipped", ""] + [f"- {s}" for s in R.get("skipped") or []] + [f"- {s} (optional: no check fails)" for s in R.get("skipped_optional") or []] + [""]
    L += rc.errors_section(R.get("errors"))
    return "\n".join(L) + "\n"
