"""Writes the results Markdown of container_suite.py from its measured JSON; nothing in it is typed
by hand. It reads either one run's results.json or a document of several runs
({date, issue, machine, runs: {name: {what, results}}}, how results/ keeps runs of one day), and
renders for each run the setup, the figures of every experiment, the checks of
container_checks.py (expected beside measured, pass/fail) and the errors. A figure a run did not
record shows as a dash.

`python3 container_suite.py --report-from results.json > results.md` renders it again."""
import sys

import report_common as rc
from container_checks import checks, compare_text
from report_common import DASH, cell, get, v

STEP_CALLS = ("suspend", "resume", "resume_back_to_gpu0", "checkpoint")


def runs_of(doc):
    """[(name, what, results)] of a document: its runs, or the document itself as one run."""
    if "runs" in doc:
        return [(k, r.get("what"), r.get("results") or {}) for k, r in doc["runs"].items()]
    return [(None, None, doc)]


def passed(doc):
    return all(rc.passed(checks(R), R.get("errors")) for _, _, R in runs_of(doc))


def render(doc):
    runs = runs_of(doc)
    first = runs[0][2]
    machine = doc.get("machine") or gpu_names(first)
    out = [f"# GPU containers under containerd-shim-kybernate-v1 on {machine} ({doc.get('date')})", ""]
    out += [(f"Issue {doc['issue']}. " if doc.get("issue") else "") + "Written by `test/gpu/container_suite.py` "
            "(`--report-from`) from the run's measured JSON; the checks are derived from it by `container_checks.py`. "
            f"\"{DASH}\" = not recorded by that run.", ""]
    if len(runs) > 1:
        out += ["| run | what | verdict |", "|---|---|---|"]
        out += [f"| {n} | {w or DASH} | {rc.verdict_line(checks(R), R.get('errors'))} |" for n, w, R in runs] + [""]
    for name, what, R in runs:
        out += render_run(name, what, R)
    return "\n".join(out)


def render_run(name, what, R):
    h = "##" if name is None else "###"
    out = [f"## Run {name} ({R.get('date')}): {what}", ""] if name is not None else []
    cs = checks(R)
    out += [rc.verdict_line(cs, R.get("errors")), ""]
    out += [f"{h} Setup", ""] + setup(R) + [""]
    out += [f"{h} Agent steps", "", "Rates against the pinned-memcpy rate of the same run (4 GiB, PyTorch).", ""]
    out += agent_steps(R) + [""]
    rows = suspend_rows(R)
    if len(rows) > 2:
        out += [f"{h} Suspend and resume", ""] + rows + [""]
    cr = [k for k in R.get("experiments") or {} if k.startswith("3")]
    if cr:
        out += [f"{h} Checkpoint and restore into a new container on the other GPU", ""] + restore_rows(R, cr) + [""]
    out += [f"{h} Checks", ""] + rc.checks_table(cs) + [""]
    errors = list(R.get("errors") or []) + [f"{k}: {e.get('traceback') or e['exception']}"
                                            for k, e in (R.get("experiments") or {}).items() if e.get("exception")]
    return out + [x.replace("## Errors", f"{h} Errors") for x in rc.errors_section(errors)]


def gpu_names(R):
    gpus = get(R, "setup", "gpus") or []
    names = sorted({g.get("name") for g in gpus})
    return f"{len(gpus)}x {', '.join(names)}" if gpus else DASH


def setup(R):
    s = R.get("setup") or {}
    inv = get(s, "agent_inventory", "response") or {}
    g = s.get("gpus") or []
    mc = R.get("pinned_memcpy") or {}
    rows = [("GPUs", "; ".join(f"{x.get('index')}: {x.get('name')} {x.get('uuid')} ({x.get('total_mib')} MiB)" for x in g) or DASH),
            ("driver / CUDA / checkpoint capability (agent inventory)",
             f"{v(inv.get('driver_version'))} / {v(inv.get('cuda_driver_version'))} / {v(inv.get('checkpoint_capability'))}"),
            ("kernel", v(s.get("kernel"))), ("CRIU", v(s.get("criu"))),
            ("containerd", f"{v(s.get('containerd'))}; {v(s.get('containerd_build'))}"),
            ("runc", v(s.get("runc") and s["runc"].splitlines()[0])),
            ("driver root / libcuda", f"{v(s.get('driver_root'))} / {v(s.get('libcuda'))}"),
            ("python / torch", f"{v(get(s, 'python', 'executable'))} / {v(get(s, 'python', 'torch'))}"),
            ("rootfs read-only binds", ", ".join(get(s, "rootfs", "read_only_binds") or []) or DASH),
            ("pinned memcpy HtoD / DtoH", f"{gbps_s(mc.get('htod_gbs'))} / {gbps_s(mc.get('dtoh_gbs'))} GB/s"),
            ("deviceNodes that resumed onto the other GPU with identical losses", v(R.get("remap_winner")))]
    return ["| | |", "|---|---|"] + [f"| {k} | {cell(x, 600)} |" for k, x in rows]


def gbps_s(x):
    return DASH if x is None else f"{x:.1f}"


def seconds(d):
    """A Go duration as the agent answers it ("2.53s") in seconds, or None."""
    try:
        return float(d[:-1]) if d and d.endswith("s") and not d.endswith("ms") else None
    except ValueError:
        return None


def agent_steps(R):
    pinned = min([x for x in (R.get("pinned_memcpy") or {}).values() if isinstance(x, (int, float))], default=None)
    out = ["| experiment | call | answer | step | bytes | s | GB/s | % of pinned memcpy |",
           "|---|---|---|---|---|---|---|---|"]
    for name, e in (R.get("experiments") or {}).items():
        for call in STEP_CALLS:
            r = e.get(call)
            if not isinstance(r, dict):
                continue
            if r.get("error"):
                out.append(f"| {name} | {call} | {cell(r['error'], 200)} | | | | | |")
            for st in get(r, "response", "result", "steps") or []:
                b, s = int(st.get("bytes") or 0), seconds(st.get("duration"))
                rate = b / s / 1e9 if b and s else None
                pct = f"{100 * rate / pinned:.1f}" if rate and pinned else DASH
                out.append(f"| {name} | {call} | {v(r.get('client_wall_s') and round(r['client_wall_s'], 2), ' s')} | "
                           f"{st.get('name')} | {b or DASH} | {v(s and round(s, 4))} | {v(rate and round(rate, 2))} | {pct} |")
    return out


def used(state, i):
    gpus = (state or {}).get("gpus") or []
    return gpus[i].get("used_mib") if len(gpus) > i else None


def used_s(e, i):
    return " / ".join(str(v(used(e.get(k), i))) for k in ("before", "during", "after"))


def suspend_rows(R):
    out = ["| experiment | deviceNodes | GPU0 MiB before / suspended / after | GPU1 MiB before / suspended / after | "
           "process on (after) | /dev/nvidia* fds before / suspended | steps during the hold | pod state suspended / after | "
           "pod kybernate.io/gpus after | losses |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in (R.get("experiments") or {}).items():
        if not (name.startswith("1-") or name.startswith("2-")):
            continue
        fds = f"{cell(get(e, 'before', 'dev_fds'))} / {cell(get(e, 'during', 'dev_fds'))}"
        states = f"{v(get(e, 'during', 'pod', 'kybernate.io/state'))} / {v(get(e, 'after', 'pod', 'kybernate.io/state'))}"
        apps = ", ".join(f"{a.get('uuid', '?')[:12]}… {a.get('mib')} MiB" for a in get(e, "after", "apps") or []) or "none"
        loss = compare_text(e["compare"]) if e.get("compare") else DASH
        out.append(f"| {name} | {v(e.get('deviceNodes'))} | {used_s(e, 0)} | {used_s(e, 1)} | {apps} | {fds} | "
                   f"{v(get(e, 'during', 'steps_during_hold'))} | {states} | {v(get(e, 'after', 'pod', 'kybernate.io/gpus'))} | {loss} |")
    return out


def _rounded(x, unit):
    return v(x if x is None else round(x, 2), unit)


def _apps(state):
    return ", ".join(f"{a.get('uuid')} {a.get('mib')} MiB" for a in (state or {}).get("apps") or []) or DASH


RESTORE_ROWS = (
    ("manageCgroupsMode / deviceNodes", lambda e: f"{v(e.get('manageCgroupsMode'))} / {v(e.get('deviceNodes'))}"),
    ("stopped at step", lambda e: v(e.get("stopped_at_step"))),
    ("VRAM checkpointed (metadata.json)", lambda e: v(get(e, "metadata", "vramBytes"), " B")),
    ("checkpoint RPC, client wall", lambda e: _rounded(get(e, "checkpoint", "client_wall_s"), " s")),
    ("image size / files", lambda e: f"{v(e.get('image_bytes'), ' B')} / {v(get(e, 'metadata', 'files'))}"),
    ("GPU MiB after the checkpoint",
     lambda e: " / ".join(str(g.get("used_mib")) for g in get(e, "after_checkpoint", "gpus") or []) or DASH),
    ("restore (ctr-run: create + start), wall", lambda e: _rounded(e.get("restore_wall_s"), " s")),
    ("restore answer", lambda e: get(e, "restore", "error") or "ok"),
    ("restored process on", lambda e: _apps(e.get("after_restore"))),
    ("cgroup before", lambda e: v(e.get("cgroup_before"))),
    ("cgroup of the restored process", lambda e: v(get(e, "after_restore", "cgroup"))),
    ("original file lines at checkpoint / after",
     lambda e: f"{v(e.get('original_lines_at_checkpoint'))} / {v(e.get('original_lines_after'))}"),
    ("losses", lambda e: compare_text(e["compare"]) if e.get("compare") else DASH),
)


def restore_rows(R, names):
    """One column per checkpoint-and-restore experiment."""
    es = [R["experiments"][k] for k in names]
    out = [f"| | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    return out + [f"| {title} | " + " | ".join(cell(fn(e), 200) for e in es) + " |" for title, fn in RESTORE_ROWS]


def main(path):
    """Writes the report of path to stdout; 0 when every check of every run passed."""
    doc = rc.load(path)
    sys.stdout.write(render(doc) + "\n")
    for _, _, R in runs_of(doc):
        for c in checks(R):
            if not c["ok"]:
                print(f"FAILED {c['scenario']}: {c['check']}: expected {c['expected']}, measured {c['measured']}",
                      file=sys.stderr)
    return 0 if passed(doc) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
