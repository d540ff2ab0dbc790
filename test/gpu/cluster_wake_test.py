"""Tests of cluster_wake.py without a cluster: the wake's timeline from recorded watch events,
the activator's overlay patch, and the report section."""
import json
import os
import sys
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_wake  # noqa: E402
import cluster_wake_report  # noqa: E402


def pod(t, state="", wake=None):
    ann = {"kybernate.io/state": state} if state else {}
    if wake:
        ann["kybernate.io/wake-requested"] = wake
    return {"t": t, "type": "MODIFIED", "name": "llm-8", "obj": {"metadata": {"name": "llm-8", "annotations": ann},
                                                                "spec": {"nodeName": "n"}, "status": {}}}


def cp(t, phase, steps=()):
    return {"t": t, "type": "MODIFIED", "name": "llm-8-resume-1",
            "obj": {"metadata": {"name": "llm-8-resume-1"}, "spec": {"podName": "llm-8", "action": "Resume"},
                    "status": {"phase": phase, "bytesMoved": 10_000_000_000,
                               "steps": [{"name": n, "duration": d} for n, d in steps]}}}


class WakeSplitTest(unittest.TestCase):
    def test_split_from_the_recorded_history(self):
        pods = types.SimpleNamespace(events=[
            pod(90.0, "Suspended", "2026-12-07T08:00:00Z"),  # an earlier wake's stamp
            pod(100.2, "Suspended", "2026-12-07T08:01:40Z"),
            pod(100.5, "Resuming", "2026-12-07T08:01:40Z"),
            pod(102.9, "Running", "2026-12-07T08:01:40Z")])
        cps = types.SimpleNamespace(events=[cp(100.4, ""), cp(102.7, "Succeeded", [("restore", "2.1s"), ("unlock", "50ms")])])
        ctx = types.SimpleNamespace(pods=pods, cps=cps)
        got = cluster_wake.wake_split(ctx, "llm-8", 100.0, 103.2, "2026-12-07T08:00:00Z")
        self.assertEqual(got["resumes"], 1)
        self.assertEqual(got["split_s"], {"ask": 0.2, "controller": 0.2, "resume": 2.7, "proxy": 0.3})
        self.assertEqual(got["resume"]["s"], 2.15)
        self.assertEqual(got["answered"], 3.2)

    def test_no_resume_seen_leaves_the_split_out(self):
        ctx = types.SimpleNamespace(pods=types.SimpleNamespace(events=[pod(100.1, "Suspended")]),
                                    cps=types.SimpleNamespace(events=[]))
        got = cluster_wake.wake_split(ctx, "llm-8", 100.0, 101.0, None)
        self.assertEqual(got["resumes"], 0)
        self.assertNotIn("split_s", got)


class UntilOkTest(unittest.TestCase):
    def test_a_pod_that_ended_stops_the_asking_with_its_log(self):
        failed = {"metadata": {"name": "llm-8"}, "status": {"phase": "Failed"}}
        ctx = types.SimpleNamespace(pods=types.SimpleNamespace(latest={"llm-8": failed}), remaining=lambda: 100,
                                    node=types.SimpleNamespace(kubectl=lambda *a, **k: "CUDA error: out of memory\n"))
        with self.assertRaisesRegex(RuntimeError, "pod llm-8 ended: phase Failed.*out of memory"):
            cluster_wake.until_ok(ctx, "llm-8.gpu-test", 60, "llm-8")


class OverlayTest(unittest.TestCase):
    def test_activator_patch_keeps_the_manifest_flags_and_moves_the_ports(self):
        repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        import cluster_node
        node = types.SimpleNamespace(p=lambda *a: os.path.join(repo, *a[1:]) if a[0] == "deploy" else None,
                                     container=cluster_node.Node.container)
        got = cluster_wake.overlay(node)
        self.assertEqual(got["resources"], ["../manifests/activator"])
        ops = {o["path"]: o["value"] for o in json.loads(got["patches"][0]["patch"])}
        cmd = ops["/spec/template/spec/containers/0/command"]
        self.assertEqual(cmd[0], "/kybernate-activator")
        self.assertIn(f"--bind-address=:{cluster_wake.PORT}", cmd)
        self.assertIn(f"--metrics-bind-address=:{cluster_wake.METRICS}", cmd)
        self.assertIn("--hold-timeout=2m", cmd)
        self.assertTrue(ops["/spec/template/spec/hostNetwork"])


class ReportTest(unittest.TestCase):
    def test_ratio_and_disk_wake_shown(self):
        s7 = {"title": "t", "idle_after": "4s", "work_gib": 0.5, "disk_wake": "not run: why",
              "sizes": {"8": {"cold_start_s": 30.0, "wake_median_s": 2.0, "ratio": 15.0,
                              "wakes": [{"wake_s": 2.0, "split_s": {"ask": 0.1, "controller": 0.1, "resume": 1.5, "proxy": 0.2},
                                         "resume": {"s": 1.4, "bytes": 1e10, "gbps": 7.1},
                                         "sleep": {"suspend": {"s": 6.0, "gbps": 1.7}, "nvml_used_gib_asleep": 0.47}}]}}}
        md = "\n".join(cluster_wake_report.report(s7))
        self.assertIn("| 8 GiB | 30.0 s | 2.0 s | 2.0 s | 15.0x |", md)
        self.assertIn("0.1 / 1.5 (0.1) / 0.2", md)
        self.assertIn("Wake from a disk image: not run: why.", md)
        self.assertEqual(cluster_wake_report.report(None), [])


if __name__ == "__main__":
    unittest.main()
