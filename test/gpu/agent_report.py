"""Writes the results Markdown of agent_suite.py from its measured JSON (results.json); nothing in
it is typed by hand. Every yes/NO verdict of the report (inventory against nvidia-smi, checksums,
training continuing) is also a check; agent_suite.py exits non-zero when one fails.

`python3 agent_suite.py --report-from results.json > agent-results.md` renders it again."""
import json
import re

import report_common as rc

GIB = 1 << 30
MIB = 1 << 20

def gib(b):
    return "–" if b is None else f"{b / GIB:.2f}"


def dur_ms(d):
    """'1.234s' / '123ms' / '1m2s' (protojson and metav1.Duration) -> ms."""
    if d is None:
        return None
    total, num = 0.0, ""
    units = {"h": 3600e3, "m": 60e3, "s": 1e3, "ms": 1, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}
    for m in re.finditer(r"([0-9.]+)(h|ms|us|µs|ns|m|s)", str(d)):
        total += float(m.group(1)) * units[m.group(2)]
    return total


def pod_usage(p, unit, name):
    return "{}/{} {} {:.2f} {}".format(p.get("namespace"), p.get("name"), p.get("residency"), p.get("bytes", 0) / unit, name)


def rate(op, name):
    """GB/s (10^9) of the named step: the operation's bytes over the step's duration."""
    for s in (op or {}).get("steps") or []:
        ms = dur_ms(s["duration"])
        if s["name"] == name and ms:
            return f"{op['bytes'] / ms / 1e6:.2f}"
    return "–"


def steps_s(op):
    if not op or not op.get("steps"):
        return "–"
    return ", ".join(f"{s['name']} {dur_ms(s['duration']):.1f} ms" for s in op["steps"])


def mib(x):
    return "–" if x is None else str(x)


def render_and_check(R):
    """(the report's text, its checks): each yes/NO verdict of the report is a check."""
    cs = []
    L = _head(R["meta"]) + _inventory(R, cs) + _cycles(R, cs) + _objects(R)
    L[2:2] = [rc.verdict_line(cs, R.get("errors")), ""]
    L += ["## Checks", "", "Every yes/NO verdict above."] + [""] + rc.checks_table(cs) + [""]
    L += ["## Errors", ""] + ([f"- {e}" for e in R.get("errors") or []] or ["none"]) + [""]
    return "\n".join(L), cs


def render(R):
    return render_and_check(R)[0]


def checks(R):
    return render_and_check(R)[1]


def yn(cs, scenario, name, expected, measured, ok):
    """Records a check and gives its verdict cell."""
    rc.check(cs, scenario, name, expected, measured, ok)
    return "yes" if ok else "NO"


def _head(m):
    L = [f"# kybernate-agent on {m.get('gpu', '?')} ({m.get('date', '?')})", "",
         "Made by `test/gpu/run-agent.sh` (agent_suite.py, torch_worker.py, kybernate-agent, agentctl). "
         "GiB = 2^30 bytes, MiB = 2^20 bytes; VRAM from nvidia-smi memory.used of GPU 0.", ""]
    if m.get("dry_run"):
        L += ["**DRY RUN: no GPU; the worker is a stand-in without torch. Figures mean nothing.**", ""]
    L += ["| | |", "|---|---|"]
    for k in ("date", "host", "gpu", "driver", "kernel", "torch", "python", "control_plane", "auth", "cgroup",
              "agent_cmd", "worker", "gpu0_used_before_worker_mib", "duration_s"):
        if k in m:
            L.append(f"| {k} | {str(m[k]).replace('|', '/')} |")
    L.append("")
    return L


def _inventory(R, cs):
    m, inv = R["meta"], R["inventory"]
    L = ["## Inventory: nvidia-smi against the GPUNode", ""]
    st = inv.get("gpunode_status") or {}
    gpus = {g["uuid"]: g for g in st.get("gpus") or []}
    L += ["| GPU | field | nvidia-smi | GPUNode status | equal |", "|---|---|---|---|---|"]
    for s in inv.get("nvidia_smi") or []:
        g = gpus.get(s["uuid"], {})
        tot = g.get("memoryTotalBytes")
        used = g.get("memoryUsedBytes")
        rows = [("uuid", s["uuid"], g.get("uuid"), s["uuid"] == g.get("uuid")),
                ("index", s["index"], g.get("index"), s["index"] == g.get("index")),
                ("model", s["name"], g.get("model"), s["name"] == g.get("model")),
                ("memory total MiB", s["memory.total"], None if tot is None else f"{tot / MIB:.0f} ({tot} B)",
                 tot is not None and s["memory.total"] == tot // MIB),
                ("memory used MiB (moments apart)", s["memory.used"], None if used is None else f"{used / MIB:.0f}", "–")]
        for name, a, b, eq in rows:
            v = eq if eq == "–" else yn(cs, "inventory", f"GPU {s['index']} {name}", a, b, eq)
            L.append(f"| {s['index']} | {name} | {a} | {b} | {v} |")
    uid = m.get("pod_uid")
    pid = inv.get("worker_pid")
    app = (inv.get("nvidia_smi_apps") or {}).get(str(pid))
    pods = [p for g in st.get("gpus") or [] for p in g.get("pods") or []]
    mine = [p for p in pods if p.get("uid") == uid]
    got = ", ".join(pod_usage(p, MIB, "MiB") for p in mine) or "–"
    ok = bool(app and mine and app[1] == mine[0].get("bytes", 0) // MIB)
    L.append(f"| 0 | worker (pid {pid}) memory, MiB | {app[1] if app else '–'} (compute-apps) | {got} | "
             f"{yn(cs, 'inventory', 'worker memory attributed to its pod', app[1] if app else '–', got, ok)} |")
    drv = (inv.get("nvidia_smi") or [{}])[0].get("driver_version")
    L.append(f"| – | driver version | {drv} | {st.get('driverVersion')} | "
             f"{yn(cs, 'inventory', 'driver version', drv, st.get('driverVersion'), drv == st.get('driverVersion'))} |")
    nv = inv.get("nvml") or {}
    cuda = nv.get("cuda_driver_version")
    ok = bool(cuda) and cuda == st.get("cudaDriverVersion")
    L.append(f"| – | CUDA driver version | {nv.get('cuda_driver_version', '–')} (NVML) | {st.get('cudaDriverVersion')} | "
             f"{yn(cs, 'inventory', 'CUDA driver version', cuda, st.get('cudaDriverVersion'), ok)} |")
    capa = st.get("checkpointCapability")
    L.append(f"| – | checkpoint capability | (driver 580 -> Remap) | {capa} | "
             f"{yn(cs, 'inventory', 'checkpoint capability', 'Remap', capa, capa == 'Remap')} |")
    cap = inv.get("node_capacity", {}).get("kybernate.io/gpu")
    want = str(2 * len(inv.get("nvidia_smi") or []))
    L.append(f"| – | Node capacity / allocatable kybernate.io/gpu | {len(inv.get('nvidia_smi') or [])} GPUs x 2 slots | "
             f"{cap} / {inv.get('node_allocatable', {}).get('kybernate.io/gpu')} | "
             f"{yn(cs, 'inventory', 'Node capacity kybernate.io/gpu', want, cap, cap == want)} |")
    conds = {c["type"]: f"{c['status']}/{c['reason']}" for c in st.get("conditions") or []}
    got = f"Ready={conds.get('Ready')}, Simulated={conds.get('Simulated')}"
    ok = conds.get("Ready", "").startswith("True") and conds.get("Simulated", "").startswith("False")
    L.append(f"| – | conditions | | {got} | {yn(cs, 'inventory', 'GPUNode conditions', 'Ready=True, Simulated=False', got, ok)} |")
    hm = st.get("hostMemory") or {}
    L.append(f"| – | host memory parkable | MemAvailable - 8Gi reserve | {gib(hm.get('parkableBytes'))} GiB | – |")
    L += ["", f"NVML memory of GPU 0 (pynvml): `{json.dumps(nv)}`", ""]
    if nv.get("v2_reserved") is not None and nv.get("v1_used") is not None:
        L += [f"Memory used: the agent reads NVML's v1 memory info (go-nvml GetMemoryInfo), whose `used` includes the "
              f"driver's reservation; nvidia-smi shows v2's `used` without it. v1 used - v2 used = "
              f"{(nv['v1_used'] - nv['v2_used']) / MIB:.0f} MiB, v2 reserved = {nv['v2_reserved'] / MIB:.0f} MiB. "
              f"Totals are the same in both.", ""]
    L += [f"Pod attributed within 45 s of the agent's start: {inv.get('pod_attributed_in_time')}", ""]
    return L


def _cycles(R, cs):
    L = ["## Suspend and resume (training loop running)", "",
          "| cycle | bytes | suspend steps | resume steps | checkpoint / restore GB/s | suspend / resume wall s | VRAM GPU0 MiB before / suspended / after "
          "| worker on GPU MiB before / suspended | RSS GiB before / suspended / after | pod state suspended / after "
          "| GPUNode while suspended | checksum ok | steps before / after resume / +0.5 s |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in R["cycles"]:
        b, s, a = c.get("before", {}), c.get("suspended", {}), c.get("after", {})
        sb, sa, sl = (c.get(k, {}).get("step") for k in ("status_before", "status_after", "status_later"))
        cont = None
        if sb and sa and sl:
            cont = int(sl) > int(sa) >= int(sb)
        ps, pa = c.get("pod_suspended", {}), c.get("pod_after", {})
        gs = c.get("gpunode_suspended") or {}
        sp = gs.get("suspendedPods") or []
        gtxt = (f"suspendedPods {', '.join(pod_usage(p, GIB, 'GiB') for p in sp)}; "
                f"parked {gib((gs.get('hostMemory') or {}).get('parkedBytes'))} GiB") if sp else "not listed"
        sus, res = c.get("suspend", {}), c.get("resume", {})
        L.append(f"| {c['label']} | {sus.get('bytes', '–')} ({gib(sus.get('bytes'))} GiB) | {steps_s(sus)} | {steps_s(res)} "
                 f"| {rate(sus, 'Checkpoint')} / {rate(res, 'Restore')} "
                 f"| {sus.get('wall_s', '–')} / {res.get('wall_s', '–')} "
                 f"| {mib(b.get('gpu0_used_mib'))} / {mib(s.get('gpu0_used_mib'))} / {mib(a.get('gpu0_used_mib'))} "
                 f"| {mib(b.get('worker_on_gpu_mib'))} / {'gone' if s and s.get('worker_on_gpu_mib') is None else mib(s.get('worker_on_gpu_mib'))} "
                 f"| {gib(b.get('rss'))} / {gib(s.get('rss'))} / {gib(a.get('rss'))} "
                 f"| {ps.get('state')} ({ps.get('gpu_resident')}) / {pa.get('state')} ({pa.get('gpu_resident')}) "
                 f"| {gtxt} "
                 f"| {_verify(cs, c)} | {_continues(cs, c, cont)} ({sb} / {sa} / {sl}) |")
        if c.get("error"):
            L.append(f"| ^ error | {c['error']} ||||||||||||")
    L.append("")
    for c in R["cycles"]:
        if c["via"] == "gpucheckpoint":
            for k in ("suspend", "resume"):
                o = c.get(k) or {}
                L.append(f"- GPUCheckpoint {k}: phase {o.get('phase')}, bytesMoved {o.get('bytes')}, gpus {o.get('gpus')}, "
                         f"conditions {[(x['type'], x['status'], x.get('reason')) for x in (o.get('status') or {}).get('conditions') or []]}, "
                         f"created -> {o.get('phase')} in {o.get('wall_s')} s")
        else:
            L.append(f"- gRPC resume result gpus: {(c.get('resume') or {}).get('gpus')}")
        L.append(f"- {c['label']}: GPUNode lists the pod Resident again after resume: {c.get('gpunode_resident_again')}; "
                 f"agent's inventory while suspended: "
                 f"{json.dumps(((c.get('agentctl_inventory_suspended') or {}).get('response') or {}).get('gpus'))[:400]}")
    L.append("")
    return L


def _verify(cs, c):
    if not c.get("verify"):
        return "–"
    ok = c["verify"].get("ok") == "1"
    return yn(cs, c["label"], "checksum of the tensors after resume", "ok=1", f"ok={c['verify'].get('ok')}", ok)


def _continues(cs, c, cont):
    if cont is None:
        return "–"
    return yn(cs, c["label"], "training continues after resume", "steps +0.5 s > steps after resume", cont, cont)


def _objects(R):
    inv = R["inventory"]
    L = ["## Pod Events", "", "| type | reason | count | source | message |", "|---|---|---|---|---|"]
    for e in R.get("events") or []:
        L.append(f"| {e['type']} | {e['reason']} | {e['count']} | {e['source'].get('component')}@{e['source'].get('host')} | "
                 f"{(e['message'] or '').replace('|', '/')} |")
    L += ["", "## Metrics (kybernate_ lines of /metrics after both cycles; histogram buckets in metrics.txt)", "", "```"] + (
        [l for l in R.get("metrics") or [] if "_bucket{" not in l] or ["–"]) + ["```", ""]
    L += ["## Agent API inventory (agentctl inventory, before the cycles)", "", "```json",
          json.dumps((inv.get("agentctl_inventory") or {}), indent=1)[:4000], "```", ""]
    L += ["## GPUCheckpoint objects (kubectl get gpucheckpoints -o wide)", "", "```", (R.get("gpucheckpoints_table") or "–").rstrip(), "```", ""]
    L += ["## GPUNode conditions after the agent stopped (SIGTERM)", "", "```json", json.dumps(R.get("gpunode_after_agent_stop"), indent=1), "```", ""]
    return L
