"""What agent_bench.py reads and changes on the host: the transparent huge page settings (sysfs),
/proc/vmstat's THP counters, khugepaged's, a process's page faults and huge pages, and a bystander
process that maps anonymous memory on request and reports how much of it came in huge pages (the
effect of the agent's THP window on other processes).

With --dry-run the THP folder is a fake one in the work folder that emulates the kernel's format
(every choice, the current one in brackets), so that the agent's window and the bench's own
changes run without touching the host."""
import os
import subprocess
import sys
import threading
import time

THP_DIR = "/sys/kernel/mm/transparent_hugepage"

BYSTANDER = r"""
import mmap, sys
def anon_huge_kib():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0
for line in sys.stdin:
    mib = int(line)
    before = anon_huge_kib()
    m = mmap.mmap(-1, mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, mib << 20, 4096):
        m[off] = 1
    print(f"ALLOC mib={mib} anon_huge_kib={anon_huge_kib() - before}", flush=True)
    m.close()
"""


CHOICES = {"enabled": ["always", "madvise", "never"], "defrag": ["always", "defer", "defer+madvise", "madvise", "never"]}


class THP:
    """The THP settings in dir (sysfs, or a fake folder that emulates it)."""

    def __init__(self, dir, fake=False):
        self.dir, self.fake = dir, fake

    @staticmethod
    def make_fake(dir):
        os.makedirs(os.path.join(dir, "khugepaged"), exist_ok=True)
        for name in ("enabled", "defrag"):
            with open(os.path.join(dir, name), "w") as f:
                f.write(" ".join("[madvise]" if w == "madvise" else w for w in CHOICES[name]) + "\n")
        for name, v in (("pages_collapsed", 0), ("full_scans", 0), ("defrag", 1), ("scan_sleep_millisecs", 10000)):
            with open(os.path.join(dir, "khugepaged", name), "w") as f:
                f.write(f"{v}\n")
        return THP(dir, fake=True)

    def read(self, name):
        """The bracketed value of a setting, or None when there is none."""
        try:
            with open(os.path.join(self.dir, name)) as f:
                s = f.read()
        except OSError:
            return None
        i, j = s.find("["), s.find("]")
        return s[i + 1:j] if 0 <= i < j else s.strip()

    def write(self, name, value):
        path = os.path.join(self.dir, name)
        if self.fake:  # the kernel's behaviour: the written choice becomes the bracketed one
            words = CHOICES[name.split("/")[-1]]
            if value not in words:
                raise OSError(f"{path}: invalid value {value!r}")
            text = " ".join(f"[{w}]" if w == value else w for w in words)
        else:
            text = value
        with open(path, "w") as f:
            f.write(text)

    def settings(self):
        out = {n: self.read(n) for n in ("enabled", "defrag", "shmem_enabled")}
        for n in ("defrag", "pages_collapsed", "full_scans", "scan_sleep_millisecs", "pages_to_scan", "max_ptes_none"):
            out[f"khugepaged/{n}"] = self.read(f"khugepaged/{n}")
        return out

    def khugepaged(self):
        out = {}
        for n in ("pages_collapsed", "full_scans"):
            v = self.read(f"khugepaged/{n}")
            out[n] = int(v) if v and v.isdigit() else None
        return out


def vmstat():
    """The THP and compaction counters of /proc/vmstat."""
    out = {}
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k.startswith(("thp_", "compact_")):
                    out[k] = int(v)
    except OSError:
        pass
    return out


def delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after if isinstance(after.get(k), int) and after[k] != before.get(k, 0)}


def proc(pid):
    """Page faults, CPU seconds, RSS and AnonHugePages of pid (None where unreadable)."""
    out = {"minflt": None, "majflt": None, "cpu_s": None, "rss": None, "anon_huge": None}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out.update(minflt=int(fields[7]), majflt=int(fields[9]), cpu_s=(int(fields[11]) + int(fields[12])) / tick)
    except (OSError, IndexError, ValueError):
        pass
    for path, key, field in ((f"/proc/{pid}/status", "rss", "VmRSS:"), (f"/proc/{pid}/smaps_rollup", "anon_huge", "AnonHugePages:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(field):
                        out[key] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return out


def meminfo_anon_huge():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Bystander:
    """A process outside Kybernate that maps and touches anonymous memory when asked."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", BYSTANDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()

    def alloc(self, mib):
        with self.lock:
            self.p.stdin.write(f"{mib}\n")
            self.p.stdin.flush()
            line = self.p.stdout.readline().split()
        kv = dict(x.partition("=")[::2] for x in line[1:])
        return {"mib": mib, "anon_huge_mib": int(kv.get("anon_huge_kib", 0)) / 1024}

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=10)


class Sampler:
    """Reads a THP setting every period while running: the values the window showed."""

    def __init__(self, thp, name="enabled", period=0.02):
        self.thp, self.name, self.period = thp, name, period
        self.seen, self._stop = [], threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            v = self.thp.read(self.name)
            if not self.seen or self.seen[-1] != v:
                self.seen.append(v)
            time.sleep(self.period)

    def wait_for(self, value, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.seen and self.seen[-1] == value:
                return True
            time.sleep(self.period)
        return False

    def stop(self):
        self._stop.set()
        self.t.join(timeout=2)
        return self.seen
