"""Writes the results Markdown of cuda_suite.py from its measured JSON (results.json) and derives
its checks (expected outcome, measured outcome, pass/fail) from the same figures, so that a report
rendered again from an old results.json gets the same checks. Nothing in it is typed by hand.

`python3 cuda_suite.py --report-from results.json > cuda-results.md` renders it again."""
import json

import report_common as rc
from cuda_checks import checks

GIB = 1 << 30
MIB = 1 << 20


def fmt(v, nd=1):
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def gib_s(b):
    return "–" if b is None else f"{b / GIB:.2f}"


def mib_s(b):
    return "–" if b is None else f"{b / MIB:.0f}"


def gpu_used_s(lst):
    """Memory used on all GPUs together."""
    return "–" if not lst else mib_s(sum(lst))


def _head(m):
    L = []
    L.append(f"# CUDA checkpoint on {m.get('gpus', '?')} ({m.get('date', '?')})")
    L.append("")
    L.append("Made by `test/gpu/run-cuda.sh` (cuda_suite.py, torch_worker.py, `cuda-test`). "
             "GB/s = 10^9 bytes/s; GiB = 2^30 bytes. \"–\" = not measured.")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    for k in ("date", "gpus", "driver", "cuda_driver_api", "checkpoint_api", "remap_api", "kernel", "thp_enabled",
              "thp_defrag", "cpus", "memtotal_start", "gpu_used_idle_mib", "torch", "python", "nvml_source", "duration_s"):
        L.append(f"| {k} | {fmt(m.get(k))} |")
    L.append("")
    return L


def _sizes(t):
    return [t[k] for k in sorted((k for k in t if k.startswith("size_")), key=lambda k: float(k[5:]))]


def _cycles(t):
    L = []
    sizes = _sizes(t)
    L.append("## 1. Suspend and resume a PyTorch process (training loop running)")
    L.append("")
    if sizes:
        L.append("| GiB | lock ms | checkpoint s | ckpt GB/s | restore s | restore GB/s | unlock ms | "
                 "GPU used MiB before / suspended / after | process on GPU MiB before / suspended | "
                 "RSS GiB before / suspended / after | MemAvailable drop GiB | data intact | training continues "
                 "(steps before / after resume / +0.5 s) | state suspended / after |")
        L.append("|" + "---|" * 14)
        for s in sizes:
            for key in ("cold", "warm"):
                c = s.get(key) if isinstance(s, dict) else None
                if not c:
                    continue
                if "error" in c:
                    L.append(f"| {c.get('label', '?')} | error: {c['error'][:200]} |" + " |" * 12)
                    continue
                L.append(
                    f"| {c['label']} | {fmt(c['lock_ms'])} | {fmt(ms_to_s(c['checkpoint_ms']), 2)} | "
                    f"{fmt(c['checkpoint_gbps'], 2)} | {fmt(ms_to_s(c['restore_ms']), 2)} | {fmt(c['restore_gbps'], 2)} | "
                    f"{fmt(c['unlock_ms'])} | {gpu_used_s(c['gpu_used_before'])} / {gpu_used_s(c['gpu_used_suspended'])}"
                    f" / {gpu_used_s(c['gpu_used_after'])} | {mib_s(pb(c['gpu_proc_before']))} / "
                    f"{mib_s(pb(c['gpu_proc_suspended'])) if c['gpu_proc_suspended'] else 'gone'} | "
                    f"{gib_s(c['rss_before'])} / {gib_s(c['rss_suspended'])} / {gib_s(c['rss_after'])} | "
                    f"{gib_s(c['memavail_drop'])} | {fmt(c['intact'])} | {fmt(c['continues'])} "
                    f"({c['steps_before']} / {c['steps_after']} / {c['steps_later']}) | "
                    f"{fmt(c['state_suspended'])} / {fmt(c['state_after'])} |")
        L.append("")
        L.append("Where checkpoint time goes (same cycles): CPU seconds and minor page faults of the target "
                 "process during checkpoint and restore, CPU of the caller (`cuda-test`), anonymous huge pages "
                 "backing the parked copy, GB/s by NVML's figure for the process.")
        L.append("")
        L.append("| GiB | target CPU s ckpt / restore | target minor faults ckpt / restore (x4 KiB = GiB) | "
                 "caller CPU s suspend / resume | AnonHugePages GiB suspended | RssShmem GiB suspended | "
                 "threads before / suspended | ckpt / restore GB/s by NVML bytes | MemTotal GiB before / suspended |")
        L.append("|" + "---|" * 9)
        for s in sizes:
            for key in ("cold", "warm"):
                c = s.get(key) if isinstance(s, dict) else None
                if not c or "error" in c:
                    continue
                mf = c["target_minflt_checkpoint"]
                L.append(
                    f"| {c['label']} | {fmt(c['target_cpu_s_checkpoint'], 2)} / {fmt(c['target_cpu_s_restore'], 2)} | "
                    f"{fmt(mf)} ({gib_s(mf * 4096) if mf is not None else '–'}) / {fmt(c['target_minflt_restore'])} | "
                    f"{fmt(c['caller_cpu_s_suspend'], 2)} / {fmt(c['caller_cpu_s_resume'], 2)} | "
                    f"{gib_s(c['anon_huge_suspended'])} | {gib_s(c['rss_shmem_suspended'])} | "
                    f"{fmt(c['target_threads_before'])} / {fmt(c['target_threads_suspended'])} | "
                    f"{fmt(c['checkpoint_gbps_nvml'], 2)} / {fmt(c['restore_gbps_nvml'], 2)} | "
                    f"{gib_s(c['memtotal_before'])} / {gib_s(c['memtotal_suspended'])} |")
        L.append("")
    for k in ("prewarm",):
        if k in t:
            L.append(f"Host memory pre-touch before the large sizes: `{json.dumps(t[k])}`")
            L.append("")
    return L


def _memcpy(t):
    L = []
    sizes = _sizes(t)
    L.append("## 2. Copy rates: the physical limit beside checkpoint/restore")
    L.append("")
    mc = t.get("memcpy", {})
    if mc.get("rows"):
        L.append("| kind | direction | GiB | best GB/s | mean GB/s | host alloc ms (pinning / first touch) |")
        L.append("|---|---|---|---|---|---|")
        allocs = {x["kind"]: x for x in mc["rows"] if x.get("event") == "host_alloc"}
        for x in mc["rows"]:
            if x.get("event") != "memcpy":
                continue
            L.append(f"| {x['kind']} | {x['dir']} | {gib_s(x['bytes'])} | {fmt(x['best_gbps'], 2)} | "
                     f"{fmt(x['mean_gbps'], 2)} | {fmt(allocs.get(x['kind'], {}).get('ms'))} |")
        best_c = [c.get("checkpoint_gbps") for s in sizes for c in s.values() if isinstance(c, dict) and c.get("checkpoint_gbps")]
        best_r = [c.get("restore_gbps") for s in sizes for c in s.values() if isinstance(c, dict) and c.get("restore_gbps")]
        if best_c:
            L.append(f"| checkpoint (device->process host memory) | dtoh | | {max(best_c):.2f} | "
                     f"{sum(best_c) / len(best_c):.2f} | |")
        if best_r:
            L.append(f"| restore (process host memory->device) | htod | | {max(best_r):.2f} | "
                     f"{sum(best_r) / len(best_r):.2f} | |")
    else:
        L.append(f"not measured: {mc}")
    L.append("")
    return L


def _remap_pidns(t):
    L = []
    L.append("## 3. Restore onto another GPU")
    L.append("")
    L.append(f"`{json.dumps(t.get('remap', 'not run'))}`")
    L.append("")
    L.append("## 4. Process in its own PID namespace, suspended by its host PID")
    L.append("")
    pn = t.get("pidns")
    if isinstance(pn, dict) and "label" in pn:
        L.append(f"pid inside {pn.get('pid_inside')}, host pid {pn.get('host_pid')}, NSpid `{pn.get('nspid')}`: "
                 f"suspend {fmt(pn.get('suspend_ok'))}, resume {fmt(pn.get('resume_ok'))}, checkpoint "
                 f"{fmt(pn.get('checkpoint_ms'))} ms, restore {fmt(pn.get('restore_ms'))} ms, process on GPU "
                 f"suspended: {pn.get('gpu_proc_suspended') or 'gone'}, data intact {fmt(pn.get('intact'))}, "
                 f"training continues {fmt(pn.get('continues'))}.")
    else:
        L.append(f"`{json.dumps(pn)}`")
    L.append("")
    return L


def _lock(t):
    L = []
    L.append("## 5. Lock with a timeout while an 8 s kernel runs")
    L.append("")
    lt = t.get("lock_timeout")
    if isinstance(lt, dict) and "short_lock" in lt:
        sl = lt["short_lock"]
        L.append(f"- lock, 1 s timeout: ok={fmt(sl.get('ok'))} after {fmt(sl.get('ms'))} ms, "
                 f"{fmt(sl.get('code_name'))} ({fmt(sl.get('code'))}), matches cuda.ErrTimeout: {fmt(sl.get('timeout'))}; "
                 f"state afterwards {fmt(lt.get('state_after_short_lock'))}")
        ll = lt["long_lock"]
        L.append(f"- lock, 30 s timeout, right after: ok={fmt(ll.get('ok'))} after {fmt(ll.get('ms'))} ms "
                 f"(done {fmt(lt.get('long_lock_done_s_after_kernel_start'))} s after the kernel started), "
                 f"{fmt(ll.get('code_name'))}; state {fmt(lt.get('state_after_long_lock'))}; unlock ok "
                 f"{fmt(lt.get('unlock_ok'))}")
        L.append(f"- training steps before / after the kernel / +0.5 s: {lt.get('steps')}: runs on "
                 f"{fmt(lt.get('runs_on'))}; data intact {fmt(lt.get('intact'))}")
    else:
        L.append(f"`{json.dumps(lt)}`")
    L.append("")
    return L


def _two_procs(t):
    L = []
    L.append("## 6. Two processes")
    L.append("")
    tp = t.get("two_procs")
    if isinstance(tp, dict) and "b_steps_per_s_before" in tp:
        L.append(f"- both on {tp['gpu']}, {tp['gib_each']} GiB each: B trained at {tp['b_steps_per_s_before']} "
                 f"steps/s before and {tp.get('b_steps_per_s_while_a_suspended')} steps/s while A was suspended "
                 f"(A suspend ok {fmt(tp.get('a_suspend_ok'))}, A on GPU while suspended: "
                 f"{tp.get('gpu_proc_a_suspended') or 'gone'}); resume ok {fmt(tp.get('a_resume_ok'))}; intact "
                 f"{tp.get('intact_after_single')}")
        for key, title in (("same_gpu", "both suspended at once, same GPU"), ("two_gpus", "both at once, one per GPU")):
            x = tp.get(key)
            if isinstance(x, dict):
                L.append(f"- {title}: checkpoint ms {x['checkpoint_ms_each']} (wall {x['suspend_wall_s']} s, aggregate "
                         f"{x['aggregate_suspend_gbps']} GB/s); restore ms {x['restore_ms_each']} (wall "
                         f"{x['resume_wall_s']} s, aggregate {x['aggregate_resume_gbps']} GB/s); ok {x['ok']}; "
                         f"intact {x['intact']}")
            else:
                L.append(f"- {title}: {x}")
    else:
        L.append(f"`{json.dumps(tp)}`")
    L.append("")
    return L


def _other(t, errors):
    L = []
    L.append("## Other results")
    L.append("")
    for k in ("info", "non_cuda_pid", "go_hold", "pairs"):
        L.append(f"- {k}: `{json.dumps(t.get(k, 'not run'))}`")
    L.append("")
    if errors:
        L.append("## Errors")
        L.append("")
        for e in errors:
            L.append(f"- {e['test']}: `{e['error'][:800]}`")
        L.append("")
    return L


def ms_to_s(ms):
    return None if ms is None else ms / 1000.0


def pb(gp):
    return gp[1] if gp else None


def render(R):
    """The whole report of one run: setup, figures, checks, errors."""
    m, t = R.get("meta", {}), R.get("tests", {})
    cs, head = checks(R), _head(m)
    L = head[:2] + [rc.verdict_line(cs, R.get("errors")), ""] + head[2:]
    L += _cycles(t) + _memcpy(t) + _remap_pidns(t) + _lock(t) + _two_procs(t)
    L += ["## Checks", "", "Derived by `cuda_checks.py` from the figures above.", ""] + rc.checks_table(cs) + [""]
    L += _other(t, R.get("errors"))
    return "\n".join(L)
