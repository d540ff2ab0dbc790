"""The Markdown section of scenario 7 (cluster_wake.py) in the cluster test's report, from
results.json only (cluster_report.py calls it)."""


def report(s7):
    """The Markdown section of scenario 7 (cluster_report.py), from results.json."""
    if not s7:
        return []
    v = lambda x, u="": "–" if x is None else f"{x}{u}"
    out = [f"## Scenario 7: {s7.get('title')}", ""]
    if s7.get("rehearsal"):
        out += ["Rehearsal without a GPU: the CPU model server behind the activator; sleeps and wakes carried out by "
                "the SIMULATED agent (the process was never suspended). Its figures are not measurements.", ""]
    out += [f"Model server test/modelserver/modelserver.py behind kybernate-activator (ExternalName Service, "
            f"`kybernate.io/idle-after: {s7.get('idle_after')}`, `kybernate.io/sleep: HostMemory`), "
            f"{s7.get('work_gib')} GiB of working memory beside the weights. The weights files were written on the "
            "host and flushed to disk before the timed starts (not part of the cold start; the server's `ready` line "
            "says it wrote nothing) and read back from the host's page cache as far as memory held them: the cold "
            "start's most favourable case. "
            "Requests go to the activator's host port with the Service as Host header.", "",
            "| weights | cold start | wakes (request -> answer) | median wake | cold / wake |", "|---|---|---|---|---|"]
    sizes = s7.get("sizes") or {}
    for k, r in sizes.items():
        out.append(f"| {k} GiB | {v(r.get('cold_start_s'), ' s')} | "
                   f"{', '.join(str(w['wake_s']) + ' s' for w in r.get('wakes') or []) or '–'} | "
                   f"{v(r.get('wake_median_s'), ' s')} | {v(r.get('ratio'), 'x')} |")
    out += ["", "| weights | cold start: bound / container running / ready / answered (s after creation) | "
            "model server: load (incl. CUDA init) / CUDA init / warm-up / ready after its start | weights file written "
            "before (not timed) |", "|---|---|---|---|"]
    for k, r in sizes.items():
        c, l = r.get("cold_split_s") or {}, r.get("server_ready_line") or {}
        g = (r.get("weights") or {}).get("generated") or {}
        out.append(f"| {k} GiB | {v(c.get('bound'))} / {v(c.get('container_running'))} / {v(c.get('ready'))} / "
                   f"{v(c.get('answered'))} | {v(l.get('load_s'))} / {v(l.get('cuda_init_s'))} / {v(l.get('warm_up_s'))} / "
                   f"{v(l.get('ready_s'))} s | {v(g.get('generate_s'), ' s')} + flush {v(g.get('fsync_s'), ' s')} |")
    rows = [(k, i, w) for k, r in sizes.items() for i, w in enumerate(r.get("wakes") or [])]
    if rows:
        out += ["", "Wake split, from the times the suite's watches saw the events: ask (request -> the activator "
                "stamped `kybernate.io/wake-requested`), resume (stamp -> the pod's state Running again: resume "
                "controller, of which the part until the Resume GPUCheckpoint existed is shown apart, and agent), "
                "proxy (-> the answer: the activator forwards the held request, the model computes it).", "",
                "| weights | wake | ask / resume (controller) / proxy (s) | agent's resume | asleep: suspend, GPU used |",
                "|---|---|---|---|---|"]
        for k, i, w in rows:
            sp, m, sl = w.get("split_s") or {}, w.get("resume") or {}, w.get("sleep") or {}
            su = sl.get("suspend") or {}
            out.append(f"| {k} GiB | {i + 1}: {w['wake_s']} s | {v(sp.get('ask'))} / {v(sp.get('resume'))} "
                       f"({v(sp.get('controller'))}) / {v(sp.get('proxy'))} | {v(m.get('s'), ' s')}, "
                       f"{v(m.get('bytes') and round(m['bytes'] / 1e9, 2), ' GB')}, {v(m.get('gbps'), ' GB/s')} | "
                       f"{v(su.get('s'), ' s')} ({v(su.get('gbps'), ' GB/s')}), {v(sl.get('nvml_used_gib_asleep'), ' GiB')} |")
    unc = [(gib, z["cold_uncached"]) for gib, z in sorted((s7.get("sizes") or {}).items(), key=lambda kv: float(kv[0]))
           if z.get("cold_uncached")]
    if unc:
        out += ["", "A second cold start per size with the node's page cache dropped before it (`echo 3 > "
                "/proc/sys/vm/drop_caches`: the weights, PyTorch and Python read from disk, as on a node that has not "
                "served the model lately):", "",
                "| weights | cold start, page cache dropped | of it: load (incl. CUDA init) | median wake | cold / wake |",
                "|---|---|---|---|---|"]
        for gib, c in unc:
            if c.get("skipped"):
                out.append(f"| {gib} GiB | {c['skipped']} | | | |")
            else:
                out.append(f"| {gib} GiB | {c.get('cold_start_s')} s | {c.get('server_ready_line', {}).get('load_s')} s | "
                           f"{(s7['sizes'][gib] or {}).get('wake_median_s')} s | {c.get('ratio')}x |")
    out += ["", f"Wake from a disk image: {s7.get('disk_wake', '–')}.", ""]
    for gib, z in sorted((s7.get("sizes") or {}).items(), key=lambda kv: float(kv[0])):
        d = z.get("disk")
        if not d:
            continue
        if d.get("skipped"):
            out += [f"- {gib} GiB: {d['skipped']}", ""]
            continue
        w = d.get("wake") or {}
        out += [f"| weights | cold start | wake from disk (request -> answer) | cold / disk wake | split (s) |", "|---|---|---|---|---|",
                f"| {gib} GiB | {z.get('cold_start_s')} s | {w.get('wake_s')} s | {d.get('ratio')}x | {w.get('split_s')} |", "",
                f"SpilledToDisk: {d.get('spilled')}", "", f"RestoredFromTier: {w.get('restored')}", ""]
    if s7.get("activator_metrics"):
        out += ["The activator's metrics at the end (`kybernate_activator_*`, histogram buckets left out):", "",
                "```", *s7["activator_metrics"], "```", ""]
    return out
