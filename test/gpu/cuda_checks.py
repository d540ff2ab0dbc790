"""The checks of cuda_suite.py, derived from its measured JSON (results.json): for every test, the
outcome the suite expects beside the one it measured. Some expected outcomes are refusals (a lock
with a 1 s timeout during an 8 s kernel times out; a restore with a pair naming an unknown GPU is
refused); those are checks like any other. cuda_suite.py exits non-zero when one fails."""
import functools

import report_common as rc

CHECKPOINTED, RUNNING = "CHECKPOINTED", "RUNNING"


def checks(R):
    """Every check of a run, in the order of its tests."""
    out = []
    for name, t in (R.get("tests") or {}).items():
        add = functools.partial(rc.check, out, name)
        if not isinstance(t, dict):
            add("recorded", "a result object", t, False)
        elif "error" in t:
            add("ran without an error", "no error", t["error"], False)
        elif "skipped" in t:
            _skipped(add, t["skipped"])
        elif name in CHECKERS:
            CHECKERS[name](add, t)
        elif name.startswith("size_"):
            for key in ("cold", "warm"):
                if isinstance(t.get(key), dict):
                    _cycle(add, t[key])
    return out


def _skipped(add, why):
    # A test skipped for want of a second GPU or of unshare(1) is no failure; one the time
    # budget cut off was not checked at all, and that fails the run.
    add("ran", "ran, or skipped because the machine lacks what it needs", f"skipped: {why}",
        "time budget" not in str(why))


def _is(add, name, want, got):
    add(name, want, got, got == want)


def _cycle(add, c):
    label = c.get("label", "?")
    if "error" in c:
        add(f"{label}: cycle ran", "no error", c["error"], False)
        return
    add(f"{label}: suspend and resume ok", "True / True", f"{c.get('suspend_ok')} / {c.get('resume_ok')}",
        c.get("suspend_ok") is True and c.get("resume_ok") is True)
    add(f"{label}: state suspended / after", f"{CHECKPOINTED} / {RUNNING}",
        f"{c.get('state_suspended')} / {c.get('state_after')}",
        (c.get("state_suspended"), c.get("state_after")) == (CHECKPOINTED, RUNNING))
    add(f"{label}: process gone from the GPU while suspended (NVML)", "gone", c.get("gpu_proc_suspended") or "gone",
        not c.get("gpu_proc_suspended"))
    _is(add, f"{label}: data intact (checksum)", True, c.get("intact"))
    add(f"{label}: training continues", "steps +0.5 s after > steps after resume",
        f"{c.get('steps_after')} -> {c.get('steps_later')}", c.get("continues") is True)


def _info(add, t):
    _is(add, "cuda-test info ran", True, t.get("ok"))
    _is(add, "GPU UUIDs equal NVML's", True, t.get("uuids_match_nvml"))


def _non_cuda_pid(add, t):
    for key, what in (("plain_process", "a process without CUDA"), ("no_such_pid", "a pid without a process")):
        r = t.get(key) or {}
        add(f"state of {what} is an error", "ok=False with a CUDA error code", f"ok={r.get('ok')} {r.get('code_name')}",
            r.get("ok") is False and bool(r.get("code_name")))


def _go_hold(add, t):
    _is(add, "Go holder: data intact after resume", True, t.get("verify_ok"))
    _is(add, "Go holder: exits cleanly", True, t.get("exit_ok"))
    add("Go holder: gone from the GPU while suspended", "gone", t.get("gpu_proc_suspended") or "gone",
        not t.get("gpu_proc_suspended"))
    _is(add, "Go holder: cuda-test suspend/resume errors", [], t.get("errors"))


def _memcpy(add, t):
    rows = [x for x in t.get("rows") or [] if x.get("event") == "memcpy"]
    add("copy rates measured", "pinned and pageable rows", f"{len(rows)} rows", bool(rows))


def _lock_timeout(add, t):
    sl, ll = t.get("short_lock") or {}, t.get("long_lock") or {}
    add("lock, 1 s timeout, during an 8 s kernel times out", "ok=False, timeout=True (cuda.ErrTimeout)",
        f"ok={sl.get('ok')}, timeout={sl.get('timeout')}, {sl.get('code_name')} after {sl.get('ms')} ms",
        sl.get("ok") is False and sl.get("timeout") is True)
    _is(add, "process state after the timed-out lock", RUNNING, t.get("state_after_short_lock"))
    _is(add, "lock, 30 s timeout, succeeds when the kernel ends", True, ll.get("ok"))
    _is(add, "unlock after it", True, t.get("unlock_ok"))
    _is(add, "training runs on", True, t.get("runs_on"))
    _is(add, "data intact", True, t.get("intact"))


def _pidns(add, t):
    add("suspend and resume by host pid", "True / True", f"{t.get('suspend_ok')} / {t.get('resume_ok')}",
        t.get("suspend_ok") is True and t.get("resume_ok") is True)
    _is(add, "data intact", True, t.get("intact"))
    _is(add, "training continues", True, t.get("continues"))


def _refused(add, name, r, state_name=None, state=None):
    r = r or {}
    add(name, "refused (ok=False), process stays CHECKPOINTED" if state_name else "refused (ok=False)",
        f"ok={r.get('ok')} {r.get('code_name')}" + (f", state {state}" if state_name else ""),
        r.get("ok") is False and (not state_name or state == CHECKPOINTED))


def _pairs(add, t):
    _is(add, "suspend", True, t.get("suspend_ok"))
    _refused(add, "restore with a pair naming an unknown GPU", t.get("bogus_pair"), "state", t.get("state_after_bogus"))
    if t.get("single_pair") is not None:
        _refused(add, "restore with one pair GPU0>GPU1 only (no bijection)", t.get("single_pair"))
    _is(add, "restore with identity pairs for every GPU", True, (t.get("identity_pairs") or {}).get("ok"))
    _is(add, "resume", True, t.get("resume_ok"))
    _is(add, "data intact", True, t.get("intact"))


def _pair_run(add, title, x):
    if not isinstance(x, dict):
        add(f"{title}: ran", "ran, or skipped for want of a second GPU", x, "skipped" in str(x))
        return
    _is(add, f"{title}: every suspend and resume ok", True, all(x.get("ok") or [False]))
    _is(add, f"{title}: data of both intact", True, all(x.get("intact") or [False]))


def _two_procs(add, t):
    _is(add, "A suspended while B trains", True, t.get("a_suspend_ok"))
    add("A gone from the GPU while suspended", "gone", t.get("gpu_proc_a_suspended") or "gone",
        not t.get("gpu_proc_a_suspended"))
    b = t.get("b_steps_per_s_while_a_suspended")
    add("B trains while A is suspended", "steps/s > 0", b, bool(b))
    _is(add, "A resumed", True, t.get("a_resume_ok"))
    _is(add, "data of A and B intact", [True, True], t.get("intact_after_single"))
    _pair_run(add, "both at once, same GPU", t.get("same_gpu"))
    _pair_run(add, "both at once, one per GPU", t.get("two_gpus"))


def _remap(add, t):
    _is(add, "suspend", True, t.get("suspend_ok"))
    _refused(add, "restore with one pair only", t.get("single_pair"), "state", t.get("state_after_single_pair"))
    _is(add, "resume with the swap pairs", True, t.get("resume_ok"))
    add("runs on the other GPU afterwards (NVML)", "on target", t.get("process_gpu_after"), t.get("on_target") is True)
    _is(add, "data intact", True, t.get("intact"))
    _is(add, "training runs on", True, t.get("runs_on"))


def _prewarm(add, t):
    add("host memory pre-touched", "rc 0", t.get("rc"), t.get("rc") == 0)


CHECKERS = {"info": _info, "non_cuda_pid": _non_cuda_pid, "go_hold": _go_hold, "memcpy": _memcpy,
            "lock_timeout": _lock_timeout, "pidns": _pidns, "pairs": _pairs, "two_procs": _two_procs,
            "remap": _remap, "prewarm": _prewarm}
