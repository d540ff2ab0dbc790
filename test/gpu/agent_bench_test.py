"""Tests of agent_bench.py's parsing, without a GPU: cuda-test's JSON lines and the agent's log lines
(samples in the formats cuda/probe and klog write; the figures are made up)."""
import os
import tempfile
import unittest

import agent_bench


class RawResult(unittest.TestCase):
    def test_suspend(self):
        out = ('{"event":"lock","pid":7,"ok":true,"ms":0.412,"timeout_ms":10000}\n'
               '{"event":"checkpoint","pid":7,"ok":true,"ms":3210.5}\n'
               '{"event":"suspend","pid":7,"ok":true,"lock_ms":0.412,"checkpoint_ms":3210.5,"total_ms":3211.1,"state":"CHECKPOINTED"}\n')
        r = agent_bench.raw_result("suspend", 0, out, "")
        self.assertEqual(r["call_s"], 3.2111)
        self.assertEqual(r["steps_s"], {"Lock": 0.000412, "Checkpoint": 3.2105})
        self.assertEqual(r["state"], "CHECKPOINTED")

    def test_resume(self):
        out = '{"event":"resume","pid":7,"ok":true,"restore_ms":201.5,"unlock_ms":0.3,"total_ms":201.9,"state":"RUNNING"}\n'
        r = agent_bench.raw_result("resume", 0, out, "")
        self.assertEqual(r["steps_s"], {"Restore": 0.2015, "Unlock": 0.0003})

    def test_failure_raises(self):
        out = '{"event":"suspend","pid":7,"ok":false,"failed_step":"lock"}\n'
        with self.assertRaisesRegex(RuntimeError, "cuda-test suspend: rc=1"):
            agent_bench.raw_result("suspend", 1, out, "cuda-test suspend: lock pid 7: CUDA_ERROR_NOT_INITIALIZED")


class EngineSeconds(unittest.TestCase):
    def test_last_line_of_the_pod(self):
        lines = [
            'I1207 08:02:40.462699 1 engine.go:362] "Suspended pod" method="/x/Suspend" pod="default/r1" bytes=1 processes=1 duration="271.5ms"',
            'I1207 08:02:40.952585 1 resume.go:68] "Resumed pod" method="/x/Resume" pod="default/r1" bytes=1 gpus=["GPU-1"] duration="108.496796ms"',
            'I1207 08:02:41.052585 1 resume.go:68] "Resumed pod" method="/x/Resume" pod="default/v8" bytes=1 gpus=["GPU-1"] duration="1.5s"',
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        self.addCleanup(os.remove, f.name)
        self.assertAlmostEqual(agent_bench.engine_s("r1", "resume", f.name), 0.108496796)
        self.assertAlmostEqual(agent_bench.engine_s("r1", "suspend", f.name), 0.2715)
        self.assertIsNone(agent_bench.engine_s("k0", "resume", f.name))
        self.assertAlmostEqual(agent_bench.engine_end("r1", "resume", f.name), 8 * 3600 + 2 * 60 + 40.952585)


if __name__ == "__main__":
    unittest.main()
