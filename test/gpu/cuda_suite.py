#!/usr/bin/env python3
"""CUDA checkpoint suite for the lent GPU machine (driver 580, CUDA 13).

Drives PyTorch processes (torch_worker.py) and the Go probe `cuda-test`
(cuda/cmd/cuda-test, built elsewhere and carried as a binary) and measures:

  1. suspend/resume of a PyTorch process holding 1, 8, 32, 64 GiB: GPU memory
     freed (NVML), host RSS growth, data intact, training continues;
  2. pinned and pageable memcpy GB/s beside checkpoint/restore GB/s;
  3. restore onto another GPU (2+ GPUs; else skipped);
  4. a process in its own PID namespace, suspended by its host PID;
  5. lock with a timeout while a long kernel runs;
  6. two processes on one GPU: suspending one leaves the other computing;
     both suspended at once for the aggregate rate;
  plus the Go holder (cuda-test hold), restores with explicit pairs, the
  state of a non-CUDA pid, and where checkpoint time goes (CPU time and page
  faults of the target, transparent huge pages, a second cycle).

Writes results.json (all figures), cuda-results.md (rendered from it by
cuda_report.py, with the checks of cuda_checks.py: expected beside measured
outcome) and workers.log under --out, rewriting them after every test so that a
run cut short still leaves its figures. Exits 1 when any check failed or a test
broke off, 0 only when every check passed. `--report-from results.json` writes
the report of an earlier run to stdout (exit status likewise). Only the
standard library is needed, plus pynvml (nvidia-ml-py) if present, else
nvidia-smi.
"""
import argparse
import datetime
import json
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

import cuda_checks
import cuda_report
import report_common

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1 << 30
MIB = 1 << 20

ARGS = None
RESULTS = {"meta": {}, "tests": {}, "errors": []}
T_START = time.time()
LOG = None
WORKERS = []


def log(*parts):
    line = f"[{time.time() - T_START:7.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def elapsed():
    return time.time() - T_START


# ---------------------------------------------------------------- probes


def run_ct(args, timeout=120):
    """Runs cuda-test with --json; returns a dict with rc, records, stderr,
    wall_s and the CPU seconds the child used."""
    cmd = [ARGS.bin] + [str(a) for a in args] + ["--json"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", (e.stderr or "") + f"\ntimed out after {timeout}s"
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    recs = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
    r = {"cmd": " ".join(cmd[1:]), "rc": rc, "records": recs, "stderr": err.strip()[-2000:], "wall_s": round(wall, 3),
         "cpu_s": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)}
    log("cuda-test", " ".join(str(a) for a in args), "->", rc, f"{wall:.2f}s",
        (err.strip().splitlines() or [""])[-1][:300])
    return r


def rec(r, event):
    """The last record of event in a run_ct result, or {}."""
    for x in reversed(r["records"]):
        if x.get("event") == event:
            return x
    return {}


def read_kv_file(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def kb(s):
    """'123 kB' -> bytes."""
    try:
        return int(s.split()[0]) * 1024
    except (ValueError, IndexError, AttributeError):
        return None


def proc_snapshot(pid):
    """Host memory, CPU time and page faults of pid."""
    st = read_kv_file(f"/proc/{pid}/status")
    sm = read_kv_file(f"/proc/{pid}/smaps_rollup")
    snap = {"rss": kb(st.get("VmRSS")), "rss_anon": kb(st.get("RssAnon")), "rss_file": kb(st.get("RssFile")),
            "rss_shmem": kb(st.get("RssShmem")), "anon_huge": kb(sm.get("AnonHugePages")),
            "threads": int(st.get("Threads", "0") or 0)}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        # after the ")": state=0 ppid=1 ... minflt=7 majflt=9 utime=11 stime=12
        snap["minflt"] = int(fields[7])
        snap["majflt"] = int(fields[9])
        snap["cpu_s"] = (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        pass
    return snap


def meminfo():
    m = read_kv_file("/proc/meminfo")
    return {"total": kb(m.get("MemTotal")), "available": kb(m.get("MemAvailable")), "free": kb(m.get("MemFree"))}


class GPUs:
    """GPU memory through NVML (pynvml) or nvidia-smi."""

    def __init__(self):
        self.nvml = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            n = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            self.uuids = [self._s(pynvml.nvmlDeviceGetUUID(h)) for h in self.handles]
            self.names = [self._s(pynvml.nvmlDeviceGetName(h)) for h in self.handles]
            self.driver = self._s(pynvml.nvmlSystemGetDriverVersion())
            self.source = "pynvml"
        except Exception as e:  # noqa: BLE001 - fall back to nvidia-smi whatever failed
            log("pynvml unavailable, using nvidia-smi:", e)
            out = subprocess.run(["nvidia-smi", "--query-gpu=uuid,name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout
            rows = [[c.strip() for c in l.split(",")] for l in out.strip().splitlines()]
            self.uuids = [r[0] for r in rows]
            self.names = [r[1] for r in rows]
            self.driver = rows[0][2] if rows else "?"
            self.source = "nvidia-smi"

    @staticmethod
    def _s(v):
        return v.decode() if isinstance(v, bytes) else v

    def used(self):
        """Bytes used per GPU index."""
        if self.nvml:
            return [self.nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles]
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
        return [int(x) * MIB for x in out.split()]

    def procs(self):
        """{pid: (gpu index, bytes)} of compute processes."""
        out = {}
        if self.nvml:
            for i, h in enumerate(self.handles):
                try:
                    for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h):
                        out[p.pid] = (i, p.usedGpuMemory or 0)
                except Exception:  # noqa: BLE001
                    pass
            return out
        res = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30).stdout
        for line in res.strip().splitlines():
            pid, uuid, mem = [c.strip() for c in line.split(",")]
            idx = self.uuids.index(uuid) if uuid in self.uuids else -1
            out[int(pid)] = (idx, int(mem) * MIB)
        return out


def snapshot(pid):
    """Everything measured around a suspend or resume of pid."""
    s = {"t": time.time(), "proc": proc_snapshot(pid), "mem": meminfo(), "gpu_used": GPU.used()}
    s["gpu_proc"] = GPU.procs().get(pid)
    return s


# ---------------------------------------------------------------- workers


class Proc:
    """A child whose stdout lines are collected by a thread."""

    def __init__(self, name, cmd, env=None):
        self.name = name
        self.lines = queue.Queue()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env, text=True, bufsize=1, start_new_session=True)
        WORKERS.append(self)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            line = line.rstrip("\n")
            LOG.write(f"[{time.time() - T_START:7.1f}s] {self.name}: {line}\n")
            LOG.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pred, timeout):
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no expected line within {timeout}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name}: exited with {self.p.wait()} before the expected line")
            if pred(line):
                return line

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def kill(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass


def kv(line):
    out = {}
    for part in line.split()[1:]:
        k, _, v = part.partition("=")
        out[k] = v
    return out


class Torch(Proc):
    """torch_worker.py on one GPU (CUDA_VISIBLE_DEVICES=uuid)."""

    def __init__(self, name, gib, uuid=None, train=True, calibrate=False, pidns=False):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if uuid:
            env["CUDA_VISIBLE_DEVICES"] = uuid
        cmd = [sys.executable, ARGS.worker, "--gib", str(gib)]
        if train:
            cmd.append("--train")
        if calibrate:
            cmd.append("--calibrate")
        if pidns:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc"] + cmd
        super().__init__(name, cmd, env)
        self.gib = gib
        self.ready = kv(self.wait_for(lambda l: l.startswith("READY"), 90 + 2 * gib))
        self.bytes = int(self.ready["bytes"])
        self.pid = host_pid_of(self.p.pid, os.path.basename(ARGS.worker)) if pidns else self.p.pid
        log(f"{name}: ready pid={self.pid} bytes={self.bytes}", self.ready)

    def ask(self, cmd, reply, timeout=60):
        self.send(cmd)
        return kv(self.wait_for(lambda l: l.startswith(reply), timeout))

    def status(self, timeout=60):
        return self.ask("status", "STATUS", timeout)

    def verify(self, timeout=120):
        return self.ask("verify", "VERIFY", timeout)

    def quit(self):
        try:
            self.send("quit")
            self.p.wait(timeout=20)
        except Exception:  # noqa: BLE001
            pass
        self.kill()


def host_pid_of(root, needle, timeout=30):
    """The pid, in this namespace, of the descendant of root whose command
    line contains needle."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        parents = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = read_kv_file(f"/proc/{d}/status")
                if "PPid" in st:
                    parents[int(d)] = int(st["PPid"])
        for pid in parents:
            a, seen = pid, 0
            while a in parents and a != root and seen < 64:
                a, seen = parents[a], seen + 1
            if a == root and pid != root:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if needle.encode() in f.read():
                            return pid
                except OSError:
                    pass
        time.sleep(0.2)
    raise RuntimeError(f"no descendant of {root} runs {needle}")


def steps_per_s(w, secs=1.0):
    a = w.status()
    time.sleep(secs)
    b = w.status()
    return (int(b["step"]) - int(a["step"])) / (float(b["t"]) - float(a["t"]))


# ---------------------------------------------------------------- one cycle


def cycle(w, label, extra_resume=None):
    """Suspends and resumes worker w, measuring everything."""
    pid, nbytes = w.pid, w.bytes
    st0 = w.status()
    before = snapshot(pid)
    s = run_ct(["suspend", "--pid", pid, "--bytes", nbytes, "--lock-timeout", "30s"], timeout=600)
    susp = snapshot(pid)
    state = rec(run_ct(["state", "--pid", pid]), "state").get("state")
    time.sleep(1.0)
    parked = snapshot(pid)
    r = run_ct(["resume", "--pid", pid, "--bytes", nbytes] + (extra_resume or []), timeout=600)
    after = snapshot(pid)
    final = rec(run_ct(["state", "--pid", pid]), "state").get("state")
    if final != "RUNNING":
        log(f"cycle {label}: state {final} after resume; trying a plain resume / unlock")
        run_ct(["resume", "--pid", pid], timeout=600)
        run_ct(["unlock", "--pid", pid])
        final = rec(run_ct(["state", "--pid", pid]), "state").get("state")
    if final != "RUNNING":
        raise RuntimeError(f"{label}: process left {final}; suspend: {s['stderr']} resume: {r['stderr']}")
    v = w.verify()
    st1 = w.status()
    time.sleep(0.5)
    st2 = w.status()
    lk, ck, rs, ul = rec(s, "lock"), rec(s, "checkpoint"), rec(r, "restore"), rec(r, "unlock")
    gp = before["gpu_proc"]
    vram = gp[1] if gp else None
    res = {
        "label": label, "gib": w.gib, "bytes": nbytes, "nvml_process_bytes": vram,
        "suspend_ok": rec(s, "suspend").get("ok"), "resume_ok": rec(r, "resume").get("ok"),
        "lock_ms": lk.get("ms"), "checkpoint_ms": ck.get("ms"), "restore_ms": rs.get("ms"), "unlock_ms": ul.get("ms"),
        "checkpoint_gbps": gbps(nbytes, ck.get("ms")), "restore_gbps": gbps(nbytes, rs.get("ms")),
        "checkpoint_gbps_nvml": gbps(vram, ck.get("ms")), "restore_gbps_nvml": gbps(vram, rs.get("ms")),
        "state_suspended": state, "state_after": rec(r, "resume").get("state"),
        "gpu_used_before": before["gpu_used"], "gpu_used_suspended": susp["gpu_used"],
        "gpu_used_after": after["gpu_used"], "gpu_proc_before": before["gpu_proc"],
        "gpu_proc_suspended": susp["gpu_proc"], "gpu_proc_after": after["gpu_proc"],
        "rss_before": before["proc"].get("rss"), "rss_suspended": susp["proc"].get("rss"),
        "rss_after": after["proc"].get("rss"),
        "rss_anon_suspended": susp["proc"].get("rss_anon"), "rss_shmem_suspended": susp["proc"].get("rss_shmem"),
        "anon_huge_suspended": susp["proc"].get("anon_huge"),
        "memavail_drop": (before["mem"]["available"] or 0) - (susp["mem"]["available"] or 0),
        "memtotal_before": before["mem"]["total"], "memtotal_suspended": susp["mem"]["total"],
        "target_cpu_s_checkpoint": delta(before, susp, "cpu_s"), "target_cpu_s_restore": delta(parked, after, "cpu_s"),
        "target_minflt_checkpoint": delta(before, susp, "minflt"), "target_minflt_restore": delta(parked, after, "minflt"),
        "target_threads_before": before["proc"].get("threads"), "target_threads_suspended": susp["proc"].get("threads"),
        "caller_cpu_s_suspend": s["cpu_s"], "caller_cpu_s_resume": r["cpu_s"],
        "suspend_wall_s": s["wall_s"], "resume_wall_s": r["wall_s"],
        "intact": v.get("ok") == "1", "checksum": v.get("checksum"), "verify_ms": v.get("ms"),
        "steps_before": int(st0["step"]), "steps_after": int(st1["step"]), "steps_later": int(st2["step"]),
        "suspend_error": s["stderr"] if s["rc"] != 0 else "", "resume_error": r["stderr"] if r["rc"] != 0 else "",
    }
    res["continues"] = res["steps_later"] > res["steps_after"]
    log(f"cycle {label}:", {k: res[k] for k in ("lock_ms", "checkpoint_ms", "restore_ms", "checkpoint_gbps",
                                                 "restore_gbps", "intact", "continues")})
    return res


def delta(a, b, key):
    x, y = a["proc"].get(key), b["proc"].get(key)
    return None if x is None or y is None else round(y - x, 3)


def gbps(nbytes, ms):
    if not nbytes or not ms:
        return None
    return round(nbytes / (ms / 1000.0) / 1e9, 2)


# ---------------------------------------------------------------- tests


def t_info():
    r = run_ct(["info"])
    devs = [x for x in r["records"] if x.get("event") == "device"]
    drv = rec(r, "driver")
    RESULTS["meta"].update({"cuda_driver_api": drv.get("cuda"), "cuda_driver_version": drv.get("version"),
                            "checkpoint_api": drv.get("checkpoint"), "remap_api": drv.get("remap")})
    return {"ok": r["rc"] == 0, "devices": devs, "uuids_match_nvml": sorted(d.get("uuid") for d in devs) == sorted(GPU.uuids),
            "stderr": r["stderr"]}


def t_non_cuda_pid():
    p = subprocess.Popen(["sleep", "60"])
    try:
        r = run_ct(["state", "--pid", p.pid])
        r2 = run_ct(["state", "--pid", 4194000])
        a, b = rec(r, "state"), rec(r2, "state")
        return {"plain_process": {k: a.get(k) for k in ("ok", "state", "code", "code_name")},
                "no_such_pid": {k: b.get(k) for k in ("ok", "state", "code", "code_name")}}
    finally:
        p.kill()
        p.wait()


def t_go_hold():
    """The pure-Go holder: 1 GiB filled through HtoD, suspended, resumed,
    verified via DtoH + CRC on SIGUSR1."""
    h = Proc("go-hold", [ARGS.bin, "hold", "--gib", "1", "--interval", "0", "--json"])
    ready = json.loads(h.wait_for(lambda l: '"READY"' in l, 60))
    pid = ready["pid"]
    before = snapshot(pid)
    s = run_ct(["suspend", "--pid", pid, "--bytes", ready["bytes"]], timeout=120)
    susp = snapshot(pid)
    r = run_ct(["resume", "--pid", pid, "--bytes", ready["bytes"]], timeout=120)
    os.kill(pid, signal.SIGUSR1)
    v = json.loads(h.wait_for(lambda l: '"verify"' in l, 60))
    os.kill(pid, signal.SIGTERM)
    try:
        ex = json.loads(h.wait_for(lambda l: '"exit"' in l, 60))
    except Exception:  # noqa: BLE001
        ex = {}
    h.kill()
    return {"ready": ready, "checkpoint_ms": rec(s, "checkpoint").get("ms"), "restore_ms": rec(r, "restore").get("ms"),
            "lock_ms": rec(s, "lock").get("ms"), "unlock_ms": rec(r, "unlock").get("ms"),
            "gpu_proc_before": before["gpu_proc"], "gpu_proc_suspended": susp["gpu_proc"],
            "rss_before": before["proc"].get("rss"), "rss_suspended": susp["proc"].get("rss"),
            "verify_ok": v.get("ok"), "verify_checksum": v.get("checksum"), "exit_ok": ex.get("ok"),
            "errors": [x["stderr"] for x in (s, r) if x["rc"] != 0]}


def t_memcpy():
    r = run_ct(["memcpy-bench", "--gib", ARGS.memcpy_gib, "--iters", 3], timeout=300)
    return {"rows": [x for x in r["records"] if x.get("event") in ("memcpy", "host_alloc")], "stderr": r["stderr"]
            if r["rc"] != 0 else ""}


def t_size(gib):
    w = Torch(f"torch-{gib}g", gib)
    try:
        out = {"cold": cycle(w, f"{gib} GiB")}
        if gib in ARGS.warm_sizes:
            out["warm"] = cycle(w, f"{gib} GiB, 2nd cycle")
        return out
    finally:
        w.quit()


def t_pairs():
    """Restore with explicit pairs on this driver: a pair naming an unknown GPU
    must be refused and leave the process CHECKPOINTED; identity pairs for
    every GPU must work (exercises the pair array marshalling)."""
    w = Torch("torch-pairs", 1)
    try:
        bogus = "GPU-ffffffff-ffff-ffff-ffff-ffffffffffff"
        s = run_ct(["suspend", "--pid", w.pid, "--bytes", w.bytes])
        bad = run_ct(["resume", "--pid", w.pid, "--pair", f"{GPU.uuids[0]}={bogus}"] +
                     sum([["--pair", f"{u}={u}"] for u in GPU.uuids[1:]], []))
        state_bad = rec(run_ct(["state", "--pid", w.pid]), "state").get("state")
        single = None
        if len(GPU.uuids) >= 2:
            # Measured on 2xH200: one pair alone is refused; record it here too.
            single = run_ct(["resume", "--pid", w.pid, "--pair", f"{GPU.uuids[0]}={GPU.uuids[1]}"])
        ident = run_ct(["resume", "--pid", w.pid] + sum([["--pair", f"{u}={u}"] for u in GPU.uuids], []))
        if not rec(ident, "resume").get("ok"):
            run_ct(["resume", "--pid", w.pid])  # leave it running, so that it can quit
            run_ct(["unlock", "--pid", w.pid])
        v = w.verify()
        return {"suspend_ok": rec(s, "suspend").get("ok"),
                "bogus_pair": {k: rec(bad, "restore").get(k) for k in ("ok", "code", "code_name")},
                "state_after_bogus": state_bad,
                "single_pair": {k: rec(single, "restore").get(k) for k in ("ok", "code", "code_name")} if single else None,
                "identity_pairs": {k: rec(ident, "restore").get(k) for k in ("ok", "code", "code_name", "ms")},
                "resume_ok": rec(ident, "resume").get("ok"), "intact": v.get("ok") == "1"}
    finally:
        w.quit()


def t_lock_timeout():
    """A kernel that spins 8 s; a lock with a 1 s timeout during it, then one
    with a 30 s timeout (how long lock waits for in-flight work)."""
    w = Torch("torch-lock", 1, calibrate=True)
    try:
        st0 = w.status()
        sl = w.ask("sleep 8", "SLEEPING")
        time.sleep(0.5)
        t_kernel = float(sl["t"])
        short = run_ct(["lock", "--pid", w.pid, "--timeout", "1s"], timeout=60)
        state1 = rec(run_ct(["state", "--pid", w.pid]), "state").get("state")
        if state1 == "LOCKED":
            log("process LOCKED after the 1 s lock; unlocking")
            run_ct(["unlock", "--pid", w.pid])
        long = run_ct(["lock", "--pid", w.pid, "--timeout", "30s"], timeout=90)
        t_locked = time.time()
        long_ok = rec(long, "lock").get("ok")
        state2 = rec(run_ct(["state", "--pid", w.pid]), "state").get("state")
        unl = run_ct(["unlock", "--pid", w.pid]) if long_ok or state2 == "LOCKED" else None
        st1 = w.status(timeout=60)
        time.sleep(0.5)
        st2 = w.status()
        v = w.verify()
        lk = rec(short, "lock")
        return {"cycles_per_s": w.ready.get("cycles_per_s"),
                "short_lock": {k: lk.get(k) for k in ("ok", "ms", "timeout_ms", "code", "code_name", "timeout")},
                "state_after_short_lock": state1,
                "long_lock": {k: rec(long, "lock").get(k) for k in ("ok", "ms", "code", "code_name")},
                "long_lock_done_s_after_kernel_start": round(t_locked - t_kernel, 2),
                "state_after_long_lock": state2,
                "unlock_ok": rec(unl, "unlock").get("ok") if unl else None,
                "steps": [int(st0["step"]), int(st1["step"]), int(st2["step"])],
                "runs_on": int(st2["step"]) > int(st1["step"]) >= int(st0["step"]), "intact": v.get("ok") == "1"}
    finally:
        w.quit()


def t_pidns():
    if not shutil.which("unshare"):
        return {"skipped": "no unshare"}
    w = Torch("torch-pidns", 1, pidns=True)
    try:
        nspid = read_kv_file(f"/proc/{w.pid}/status").get("NSpid")
        res = cycle(w, "1 GiB in own pid namespace")
        res.update({"pid_inside": w.ready.get("pid"), "host_pid": w.pid, "nspid": nspid})
        return res
    finally:
        w.quit()


def concurrent(workers, action):
    """Runs suspend or resume on all workers at once; returns per-worker
    results and the wall time of the whole."""
    out = [None] * len(workers)

    def go(i, w):
        out[i] = run_ct([action, "--pid", w.pid, "--bytes", w.bytes], timeout=600)

    t0 = time.time()
    ts = [threading.Thread(target=go, args=(i, w)) for i, w in enumerate(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.time() - t0
    return out, wall


def t_two_procs():
    gib = ARGS.pair_gib
    u0 = GPU.uuids[0]
    a = Torch("torch-A", gib, uuid=u0)
    b = Torch("torch-B", gib, uuid=u0)
    res = {"gpu": u0, "gib_each": gib}
    try:
        res["b_steps_per_s_before"] = round(steps_per_s(b), 1)
        s = run_ct(["suspend", "--pid", a.pid, "--bytes", a.bytes], timeout=300)
        res["a_suspend_ok"] = rec(s, "suspend").get("ok")
        res["gpu_proc_a_suspended"] = GPU.procs().get(a.pid)
        res["b_steps_per_s_while_a_suspended"] = round(steps_per_s(b), 1)
        r = run_ct(["resume", "--pid", a.pid, "--bytes", a.bytes], timeout=300)
        res["a_resume_ok"] = rec(r, "resume").get("ok")
        res["intact_after_single"] = [a.verify().get("ok") == "1", b.verify().get("ok") == "1"]
        res["same_gpu"] = concurrent_pair([a, b])
    finally:
        a.quit()
        b.quit()
    if len(GPU.uuids) >= 2:
        a = Torch("torch-A0", gib, uuid=GPU.uuids[0])
        b = Torch("torch-B1", gib, uuid=GPU.uuids[1])
        try:
            res["two_gpus"] = concurrent_pair([a, b])
        finally:
            a.quit()
            b.quit()
    else:
        res["two_gpus"] = "skipped: 1 GPU"
    return res


def concurrent_pair(ws):
    total = sum(w.bytes for w in ws)
    s, s_wall = concurrent(ws, "suspend")
    r, r_wall = concurrent(ws, "resume")
    intact = [w.verify().get("ok") == "1" for w in ws]
    return {"bytes_total": total,
            "checkpoint_ms_each": [round1(rec(x, "checkpoint").get("ms")) for x in s],
            "restore_ms_each": [round1(rec(x, "restore").get("ms")) for x in r],
            "suspend_wall_s": round(s_wall, 3), "resume_wall_s": round(r_wall, 3),
            "aggregate_suspend_gbps": round(total / s_wall / 1e9, 2),
            "aggregate_resume_gbps": round(total / r_wall / 1e9, 2),
            "ok": [rec(x, "suspend").get("ok") for x in s] + [rec(x, "resume").get("ok") for x in r],
            "intact": intact}


def round1(x):
    return None if x is None else round(x, 1)


def t_remap():
    if len(GPU.uuids) < 2:
        return {"skipped": "skipped: 1 GPU"}
    u0, u1 = GPU.uuids[0], GPU.uuids[1]
    w = Torch("torch-remap", 1, uuid=u0)
    try:
        s = run_ct(["suspend", "--pid", w.pid, "--bytes", w.bytes])
        single = run_ct(["resume", "--pid", w.pid, "--pair", f"{u0}={u1}"])
        st = rec(run_ct(["state", "--pid", w.pid]), "state").get("state")
        r = run_ct(["resume", "--pid", w.pid, "--from", u0, "--to", u1, "--bytes", w.bytes])
        time.sleep(0.5)
        procs = GPU.procs()
        v = w.verify()
        st1 = w.status()
        time.sleep(0.5)
        st2 = w.status()
        return {"suspend_ok": rec(s, "suspend").get("ok"),
                "single_pair": {k: rec(single, "restore").get(k) for k in ("ok", "code", "code_name")},
                "state_after_single_pair": st, "pairs": rec(r, "pairs").get("pairs"),
                "resume_ok": rec(r, "resume").get("ok"), "restore_ms": rec(r, "restore").get("ms"),
                "process_gpu_after": GPU.uuids[procs[w.pid][0]] if w.pid in procs else None,
                "on_target": w.pid in procs and GPU.uuids[procs[w.pid][0]] == u1,
                "intact": v.get("ok") == "1", "runs_on": int(st2["step"]) > int(st1["step"])}
    finally:
        w.quit()


def t_prewarm():
    """Touches host memory once so that later checkpoints measure the driver,
    not a virtual machine growing its memory (Firecracker machines here start
    small and grow on first use)."""
    need = int((max(ARGS.sizes) + 12) * GIB)
    m0 = meminfo()
    if (m0["total"] or 0) >= need * 1.15:
        return {"skipped": f"MemTotal {m0['total'] / GIB:.1f} GiB already large enough", "memtotal": m0["total"]}
    t0 = time.time()
    code = ("import torch,sys; n=int(sys.argv[1]); t=torch.empty(n,dtype=torch.uint8); t.fill_(1); "
            "print(int(t[::4096].sum()))")
    p = subprocess.run([sys.executable, "-c", code, str(need)], capture_output=True, text=True, timeout=300)
    dt = time.time() - t0
    m1 = meminfo()
    return {"bytes": need, "s": round(dt, 2), "gbps": round(need / dt / 1e9, 2), "rc": p.returncode,
            "memtotal_before": m0["total"], "memtotal_after": m1["total"], "stderr": p.stderr[-500:]}


def save():
    RESULTS["meta"]["duration_s"] = round(elapsed(), 1)
    RESULTS["checks"] = cuda_checks.checks(RESULTS)
    with open(os.path.join(ARGS.out, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    with open(os.path.join(ARGS.out, "cuda-results.md"), "w") as f:
        f.write(cuda_report.render(RESULTS) + "\n")


def run_test(name, fn, *a):
    if elapsed() > ARGS.budget:
        RESULTS["tests"][name] = {"skipped": f"time budget {ARGS.budget}s spent"}
        log(f"skip {name}: budget")
        save()
        return
    log(f"=== {name}")
    try:
        RESULTS["tests"][name] = fn(*a)
    except Exception as e:  # noqa: BLE001 - record and go on with the next test
        tb = traceback.format_exc()
        log(f"{name} failed: {tb}")
        RESULTS["tests"][name] = {"error": f"{type(e).__name__}: {e}", "label": name}
        RESULTS["errors"].append({"test": name, "error": tb})
    finally:
        for w in list(WORKERS):
            w.kill()
        WORKERS.clear()
    save()


def meta():
    m = RESULTS["meta"]
    m["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    m["gpus"] = ", ".join(f"{n} ({u})" for n, u in zip(GPU.names, GPU.uuids))
    m["driver"] = GPU.driver
    m["nvml_source"] = GPU.source
    m["kernel"] = os.uname().release
    for k in ("enabled", "defrag"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{k}") as f:
                m[f"thp_{k}"] = f.read().strip()
        except OSError:
            m[f"thp_{k}"] = None
    m["cpus"] = os.cpu_count()
    m["gpu_used_idle_mib"] = [round(u / MIB) for u in GPU.used()]
    m["memtotal_start"] = f"{(meminfo()['total'] or 0) / GIB:.1f} GiB"
    m["python"] = sys.version.split()[0]
    try:
        m["torch"] = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                                    capture_output=True, text=True, timeout=120).stdout.strip()
    except Exception as e:  # noqa: BLE001
        m["torch"] = f"? {e}"


def main():
    global ARGS, LOG, GPU
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", help="cuda-test binary (required for a run)")
    ap.add_argument("--out", help="folder for results.json, cuda-results.md, workers.log (required for a run)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON", help="only write the report of an earlier run to stdout")
    ap.add_argument("--worker", default=os.path.join(HERE, "torch_worker.py"))
    ap.add_argument("--sizes", default="1,8,32,64", help="GiB held by the PyTorch process, comma separated")
    ap.add_argument("--warm-sizes", default="8", help="sizes that get a second suspend/resume cycle")
    ap.add_argument("--memcpy-gib", type=float, default=4)
    ap.add_argument("--pair-gib", type=float, default=8)
    ap.add_argument("--budget", type=float, default=420, help="seconds after which remaining tests are skipped")
    ap.add_argument("--only", default="", help="comma separated test names to run (default all)")
    ARGS = ap.parse_args()
    if ARGS.report_from:
        return report_from(ARGS.report_from)
    if not ARGS.bin or not ARGS.out:
        ap.error("--bin and --out are required for a run")
    ARGS.sizes = [float(x) if "." in x else int(x) for x in ARGS.sizes.split(",") if x]
    ARGS.warm_sizes = [float(x) if "." in x else int(x) for x in ARGS.warm_sizes.split(",") if x]
    os.makedirs(ARGS.out, exist_ok=True)
    LOG = open(os.path.join(ARGS.out, "workers.log"), "w")
    GPU = GPUs()
    meta()
    log("meta", RESULTS["meta"])

    small = [s for s in ARGS.sizes if s <= 8]
    large = [s for s in ARGS.sizes if s > 8]
    plan = [("info", t_info), ("non_cuda_pid", t_non_cuda_pid), ("go_hold", t_go_hold), ("memcpy", t_memcpy)]
    plan += [(f"size_{s}", t_size, s) for s in small]
    plan += [("lock_timeout", t_lock_timeout), ("pidns", t_pidns), ("pairs", t_pairs), ("two_procs", t_two_procs),
             ("remap", t_remap)]
    if large:
        plan.append(("prewarm", t_prewarm))
    plan += [(f"size_{s}", t_size, s) for s in large]
    only = set(x for x in ARGS.only.split(",") if x)
    try:
        for name, fn, *a in plan:
            if only and name not in only:
                continue
            run_test(name, fn, *a)
    finally:
        for w in WORKERS:
            w.kill()
        save()
        log("done; results in", ARGS.out)
    return verdict(RESULTS)


def verdict(R):
    """1 when a check failed or a test broke off (each logged), else 0."""
    cs = cuda_checks.checks(R)
    for c in cs:
        if not c["ok"]:
            print(f"FAILED {c['scenario']}: {c['check']}: expected {c['expected']}, measured {c['measured']}",
                  file=sys.stderr)
    ok = report_common.passed(cs, R.get("errors"))
    print(report_common.verdict_line(cs, R.get("errors")).replace("**", ""), file=sys.stderr)
    return 0 if ok else 1


def report_from(path):
    R = report_common.load(path)
    sys.stdout.write(cuda_report.render(R) + "\n")
    return verdict(R)


if __name__ == "__main__":
    sys.exit(main())
