"""Tests of bench_report.py (agent_bench.py's report and checks) on FABRICATED TEST DATA: every figure
below is made up to exercise the report; none is a measurement. Runnable without a GPU:
`python3 -m unittest discover -s test/gpu -p '*_test.py'`."""
import copy
import unittest

import bench_report
import report_common

GIB = 1 << 30


def op(nbytes, seconds, steps, t0=0.0):
    return {"path": "grpc", "bytes": nbytes, "call_s": seconds, "process_s": seconds + 0.02, "steps_s": steps, "engine_s": seconds - 0.005,
            "engine_end": 1000 + t0 + seconds - 0.001, "t0": t0, "t1": t0 + seconds}


def cycle(gib, ckpt_gbps, restore_gbps, via="grpc", window=False, orig="madvise"):
    """A made-up suspend/resume cycle of gib GiB at the given rates."""
    n = int(gib * GIB)
    s, r = n / ckpt_gbps / 1e9, n / restore_gbps / 1e9
    c = {"worker": f"v{gib:g}", "gib": gib, "via": via,
         "suspend": op(n, s, {"Lock": 0.0004, "Checkpoint": s - 0.01}),
         "resume": op(n, r, {"Restore": r - 0.01, "Unlock": 0.001}),
         "target_suspend": {"minflt": 4000 if window else int(n / 4096), "majflt": 0, "cpu_s": s},
         "parked": {"rss": n, "anon_huge": n if window else 0},
         "vmstat_suspend": {"thp_fault_alloc": 4000} if window else {}, "khugepaged_suspend": {},
         "thp_during_suspend": [orig, "always", orig] if window else [orig], "thp_after_suspend": orig,
         "verify": {"ok": "1"}}
    if via == "raw":
        c["suspend"]["path"] = c["resume"]["path"] = "raw"
    return c


def fabricated():
    """FABRICATED TEST DATA: a run that meets every goal."""
    R = {"meta": {"date": "FABRICATED TEST DATA", "gpu": "none (test data)", "command": "--test"},
         "thp": {"original": {"enabled": "madvise", "defrag": "madvise"}, "at_end": {"enabled": "madvise", "defrag": "madvise"},
                 "settings_at_start": {"enabled": "madvise"}, "fake": True},
         "variants": {
             "a": {"what": "default", "cycles": [cycle(8, 2.4, 6.7), cycle(32, 2.6, 7.2)]},
             "b": {"what": "window", "cycles": [cycle(8, 3.7, 9.0, window=True), cycle(32, 4.0, 9.8, window=True)]},
             "c": {"what": "always", "cycles": [cycle(8, 3.6, 8.9, window=True), cycle(32, 4.0, 9.7, window=True)]}},
         "concurrency": {"b": {"runs": [
             {"k": 1, "gib_each": 4, "suspend": [op(4 * GIB, 1.1, {}, 0)], "resume": [op(4 * GIB, 0.5, {}, 2)]},
             {"k": 2, "gib_each": 4, "suspend": [op(4 * GIB, 2.0, {}, 0), op(4 * GIB, 2.1, {}, 0.01)],
              "resume": [op(4 * GIB, 0.9, {}, 3), op(4 * GIB, 0.9, {}, 3)]}]}},
         "overhead": {"gib": 8, "cycles": [cycle(8, 2.4, 6.7, via=v) for _ in range(5) for v in ("raw", "grpc")]},
         "restore_1gib": {"gib": 1, "cycles": [cycle(1, 2.0, 5.0, via=v) for _ in range(3) for v in ("raw", "grpc")]},
         "agents": [{"label": "a-default", "cmd": "--node-name gpu-node", "start_s": 1.2, "metrics": ["kybernate_agent_thp_window_open 0"]}],
         "skipped": [], "errors": []}
    R["variants"]["a"]["cycles"][1]["bystander"] = {"mib": 512, "anon_huge_mib": 0, "enabled_then": "madvise"}
    R["variants"]["b"]["cycles"][1]["bystander"] = {"mib": 512, "anon_huge_mib": 510, "enabled_then": "always", "suspend_still_running": True}
    return R


def failed(R):
    return [(c["scenario"], c["check"]) for c in bench_report.checks(R) if not c["ok"]]


class BenchReport(unittest.TestCase):
    def test_a_run_that_meets_the_goals_passes_and_renders(self):
        R = fabricated()
        self.assertEqual(failed(R), [])
        text = bench_report.render(R)
        self.assertIn("**ALL CHECKS PASSED**", text)
        self.assertIn("| 8 GiB | 2.40 / 3.70 / 3.60 | 1.54 | 1.50 |", text)
        self.assertIn("| b | always | yes | 512 | 510 |", text)
        self.assertIn("| grpc | 3 | 0.2147 | 0.2047 | 0.0010 | 0.0090 | 0.0040 | 0.0050 | 0.2347 |", text)

    def test_window_below_the_goal_fails(self):
        R = fabricated()
        R["variants"]["b"]["cycles"][0] = cycle(8, 3.0, 9.0, window=True)  # 1.25x
        self.assertEqual(failed(R), [("1 THP window", "8 GiB suspend, window vs default")])

    def test_window_left_open_fails(self):
        R = fabricated()
        R["variants"]["b"]["cycles"][0]["thp_after_suspend"] = "always"
        self.assertEqual(failed(R), [("1 THP window", "b 8 GiB: enabled during / after the suspend")])

    def test_thp_not_put_back_fails(self):
        R = fabricated()
        R["thp"]["at_end"]["enabled"] = "always"
        self.assertEqual(failed(R), [("host", "THP settings at the end")])

    def test_serial_suspends_fail(self):
        R = fabricated()
        run = R["concurrency"]["b"]["runs"][1]
        run["suspend"][1] = op(4 * GIB, 1.0, {}, 2.5)  # started after the first ended
        self.assertEqual(failed(R), [("2 concurrency", "b: k=2 suspends in flight at once"),
                                     ("2 concurrency", "b: k=2 suspends inside the engine at once (agent log)")])

    def test_suspends_the_engine_ran_one_after_the_other_fail(self):
        R = fabricated()
        first, second = R["concurrency"]["b"]["runs"][1]["suspend"]
        second["engine_s"] = 0.05  # the engine's part began after the first had ended
        self.assertEqual(failed(R), [("2 concurrency", "b: k=2 suspends inside the engine at once (agent log)")])

    def test_overhead_above_five_percent_fails(self):
        R = fabricated()
        for c in R["overhead"]["cycles"]:
            if c["via"] == "grpc":
                c["suspend"]["call_s"] *= 1.3
        self.assertEqual(failed(R), [("3 overhead", "suspend: gRPC over raw (median of 5)")])

    def test_skipped_phase_and_missing_figures_fail(self):
        R = fabricated()
        R["skipped"] = ["variant c: needs ~40 s"]
        R["restore_1gib"] = {}
        self.assertEqual(failed(R), [("6 restore 1 GiB", "the driver's restore in the agent vs in a fresh process"),
                                     ("all", "every phase ran before the deadline")])
        self.assertFalse(report_common.passed(bench_report.checks(R)))

    def test_an_empty_run_renders_and_fails(self):
        R = {"meta": {}, "thp": {}, "errors": ["bench: stopped"]}
        text = bench_report.render(copy.deepcopy(R))
        self.assertIn("**FAILED**", text)

    def test_durations(self):
        self.assertAlmostEqual(bench_report.dur_s("1.5s"), 1.5)
        self.assertAlmostEqual(bench_report.dur_s("0.000412s"), 0.000412)
        self.assertIsNone(bench_report.dur_s(None))


if __name__ == "__main__":
    unittest.main()
