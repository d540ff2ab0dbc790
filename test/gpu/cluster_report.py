"""Writes the results Markdown of cluster_suite.py from its measured JSON (results.json); nothing
in it is typed by hand. `python3 cluster_report.py results.json > results.md` renders it again."""
import json
import sys

import cluster_wake_report
from report_common import get as _get
from report_common import v as _v


def render(R):
    s, sc = R.get("setup", {}), R.get("scenarios", {})
    g = (s.get("gpus") or [{}])[0]
    where = "a real GPU node" if s.get("gpus") else "a machine WITHOUT a GPU (rehearsal of the bring-up; the scenarios need a GPU)"
    out = [f"# Kybernate on {where}: kubelet, containerd, shim, agent and kybernate-scheduler ({R.get('date')})", ""]
    if s.get("agent_simulated"):
        out += ["The agent ran with `--simulate` (simulated GPUs) for this rehearsal: nothing here touched a GPU.", ""]
    passed = sum(c["ok"] for c in R.get("checks", []))
    out += [f"**{'ALL CHECKS PASSED' if R.get('passed') else 'FAILED'}**: {passed} of {len(R.get('checks', []))} checks "
            f"passed; run took {R.get('duration_s')} s. Written by `test/gpu/cluster_report.py` from the run's "
            "`results.json`.", ""]
    m = s.get("machine", {})
    out += ["## Setup", "", "| | |", "|---|---|",
            f"| GPU | {g.get('name', '–')} ({_v(g.get('memory_bytes') and round(g['memory_bytes'] / 2**30, 1), ' GiB')}), "
            f"driver {g.get('driver', '–')} |",
            f"| machine | kernel {m.get('kernel')}, {m.get('cpus')} CPUs, {m.get('mem_gib')} GiB, cgroup fs {m.get('cgroup')} |",
            "| control plane | etcd, kube-apiserver, kube-controller-manager, kube-scheduler (one multi-call binary, "
            "test/gpu/cluster/multicall) on 127.0.0.1 |",
            f"| node | kubelet (cgroupfs, cgroupRoot /kybernate-gpu), containerd 1.7 CRI, snapshotter {s.get('snapshotter')}, "
            "runtime handler `kybernate` = containerd-shim-kybernate-v1, runc |",
            "| Kybernate | `kubectl apply -k` of an overlay of manifests/ (cluster_node.py says what it changes and why); "
            f"quantum {s.get('quantum')}, min quantum factor {s.get('factor')}, slots per GPU 4"
            + (f"; agent flags {' '.join(f'{k}={v}' for k, v in s['agent_flags'].items())}" if s.get("agent_flags") else "") + " |",
            f"| driver for the shim and the agent | root {_get(s, 'driver', 'root')}, libraries {_get(s, 'driver', 'libdir')} |",
            f"| pods | host network; image host-python (empty root) + the host's Python tree read-only: "
            f"{', '.join(s.get('host_mounts') or [])}; `{_get(s, 'python', 'python')}` |",
            f"| kybernate.io/gpu allocatable | {s.get('allocatable_kybernate_gpu')} |",
            f"| components Ready after apply | {s.get('components_ready_s')} s |",
            f"| built from | {s.get('build') or '–'} |", ""]

    s1, s2, s3, s4, s5 = (sc.get(k, {}) for k in ("s1", "s2", "s3", "s4", "s5"))
    sus, res = s1.get("suspend") or {}, s1.get("resume") or {}
    out += ["## Figures", "", "| | suspension (Kybernate) | default preemption (kube-scheduler, Job) |", "|---|---|---|",
            f"| preemptor: creation to Running | {_v(_get(s1, 'preemptor', 'time_to_running_s'), ' s')} | "
            f"{_v(s2.get('preemptor_time_to_running_s'), ' s')} |",
            f"| victim: steps lost | {_v(s1.get('steps_lost'))} | {_v(s2.get('victim_steps_lost'))} "
            f"(its Job's new pod: start {_v(_get(s2, 'restart', 'start'))}, from step {_v(_get(s2, 'restart', 'first_step'))}) |",
            f"| victim: suspend | {_v(sus.get('s'), ' s')}, {_v(sus.get('bytes') and round(sus['bytes'] / 1e9, 2), ' GB')}, "
            f"{_v(sus.get('gbps'), ' GB/s')} ({', '.join(f'{k} {v}s' for k, v in (sus.get('steps') or {}).items())}) | - |",
            f"| victim: resume | {_v(res.get('s'), ' s')}, {_v(res.get('bytes') and round(res['bytes'] / 1e9, 2), ' GB')}, "
            f"{_v(res.get('gbps'), ' GB/s')} ({', '.join(f'{k} {v}s' for k, v in (res.get('steps') or {}).items())}) | - |",
            f"| GPU memory used while the victim is suspended (NVML) | {_v(s1.get('nvml_used_gib_suspended'), ' GiB')} | - |",
            ""]
    if s2.get("note"):
        out += [f"Baseline: {s2['note']}.", ""]
    out += ["| time slicing (3 pods, a third of the GPU each) | |", "|---|---|",
            f"| window | {_v(s3.get('window_s'), ' s')} |",
            f"| turns | {s3.get('turns')} |",
            f"| GPU-time shares (from the steps each pod wrote) | {s3.get('shares')} |",
            f"| resident seconds | {s3.get('resident_s')} |",
            f"| kybernate.io/gpu-time annotations | {s3.get('gpu_time_annotation')} |",
            f"| GPU busy fraction (NVML utilization > 0) / mean utilization | {_v(s3.get('nvml_busy_fraction'))} / "
            f"{_v(s3.get('nvml_mean_utilization_pct'), ' %')} |",
            f"| declared / real memory per pod | {_v(s3.get('declared_gib'), ' GiB')} / {_v(s3.get('ballast_gib'), ' GiB')} ballast |",
            f"| suspends (s, GB/s) | {[(x['s'], x['gbps']) for x in s3.get('suspends') or []]} |",
            f"| resumes (s, GB/s) | {[(x['s'], x['gbps']) for x in s3.get('resumes') or []]} |", ""]
    out += ["| agent restart, deletion | |", "|---|---|",
            f"| agent back after SIGKILL | {_v(s4.get('agent_back_s'), ' s')} |",
            f"| resume after the restart | {_v(_get(s4, 'resume_after_restart', 's'), ' s')} |",
            f"| deleted suspended pod: RSS running / suspended | {_v(s5.get('rss_running_gib'), ' GiB')} / "
            f"{_v(s5.get('rss_suspended_gib'), ' GiB')} |",
            f"| node MemAvailable before / after the deletion | {_v(s5.get('mem_available_before_gib'), ' GiB')} / "
            f"{_v(s5.get('mem_available_after_gib'), ' GiB')} |",
            f"| process gone after the delete | {_v(s5.get('process_gone_s'), ' s')} |"]
    if "memory_returned_s" in s5:
        out += [f"| its memory back in MemAvailable after the delete | {_v(s5.get('memory_returned_s'), ' s')} |"]
    out += [""]
    s6 = sc.get("s6", {})
    if s6:
        out += ["| restore guard | |", "|---|---|",
                f"| memory taken by a process outside Kybernate | {_v(s6.get('outside_process_gib'), ' GiB')} |",
                f"| while it held the memory | {s6.get('while_held')} |",
                f"| resumed after it ended | {_v(s6.get('resumed_after_s'), ' s')} |", ""]
    out += cluster_wake_report.report(sc.get("s7"))
    out += tiers_report(sc.get("s8"), 8)
    out += tiers_report(sc.get("s9"), 9)
    out += ["## Checks", "", "| scenario | check | result | detail |", "|---|---|---|---|"]
    for c in R.get("checks", []):
        d = str(c.get("detail", "")).replace("|", "\\|").replace("\n", " ")[:400]
        out.append(f"| {c['scenario']} | {c['check']} | {'PASS' if c['ok'] else '**FAIL**'} | {d} |")
    if R.get("errors"):
        out += ["", "## Errors", ""] + ["```", *[e.strip()[-1500:] for e in R["errors"]], "```"]
    return "\n".join(out) + "\n"


def tiers_report(s8, n):
    """Scenario 8's or 9's figures: the spill of a suspended GPU pod to disk (and on to object
    storage) and its restore."""
    if not s8:
        return []
    sleep, wake, up = s8.get("sleep", {}), s8.get("wake", {}), s8.get("upload")
    st = sleep.get("storage", {})
    rows = []
    if up:
        ust = up.get("storage", {})
        rows = [f"| SpilledToDisk -> UploadedToObjectStore Event | {_v(up.get('uploaded_after_spill_s'), ' s')} |",
                f"| image in the object store (stored) | {_v(ust.get('storedBytes'), ' B')} at {ust.get('location')} |"]
    return [f"## Scenario {n}: {s8.get('title')}", "",
            f"Agent flags: {s8.get('tier_flags')}" + (f", then {s8.get('agent_flags')}" if s8.get("agent_flags") else "") + f"; the pod has {s8.get('ballast_gib')} GiB of tensors beside PyTorch, "
            "`kybernate.io/sleep: Disk`, restartPolicy OnFailure; put to sleep by a GPUCheckpoint Suspend (reason Idle, as the "
            "activator does) and woken by a Resume (reason Manual).", "",
            "| step | figure |", "|---|---|",
            f"| suspend (driver checkpoint into host memory) | {_v(_get(sleep, 'suspend', 's'), ' s')}, {_v(_get(sleep, 'suspend', 'gbps'), ' GB/s')} |",
            f"| Suspend created -> SpilledToDisk Event | {_v(sleep.get('spilled_after_sleep_s'), ' s')} |",
            f"| RSS running / parked | {_v(sleep.get('rss_running_gib'), ' GiB')} / {_v(sleep.get('rss_parked_gib'), ' GiB')} |",
            f"| MemAvailable freed by the spill | {_v(sleep.get('mem_available_freed_gib'), ' GiB')} |",
            f"| image in the disk tier (plaintext / stored) | {_v(st.get('sizeBytes'), ' B')} / {_v(st.get('storedBytes'), ' B')} |",
            *rows,
            f"| Resume created -> Succeeded | {_v(wake.get('resume_s'), ' s')} ({_get(wake, 'resume', 'steps')}) |",
            f"| kubelet restart count at the end | {s8.get('restart_count')} |", "",
            f"SpilledToDisk: {sleep.get('event')}", "",
            *([f"UploadedToObjectStore: {up.get('event')}", ""] if up else []),
            f"RestoredFromTier: {wake.get('restored_event')}", ""]


if __name__ == "__main__":
    sys.stdout.write(render(json.load(open(sys.argv[1]))))
