"""Tests of the GPU suites' report code, runnable without a GPU:
`python3 -m unittest discover -s test/gpu -p '*_test.py'`.

Every committed results/<name>-<suite>.md must be what its suite's report code renders from the
.json beside it, and a failed figure in that JSON must turn into a failed check."""
import copy
import glob
import json
import os
import unittest

import agent_report
import cluster_report
import container_report
import cuda_report
import report_common
from cuda_checks import checks as cuda_checks

HERE = os.path.dirname(os.path.abspath(__file__))
RENDER = {  # suite -> the text its --report-from writes for a results JSON
    "cuda": lambda R: cuda_report.render(R) + "\n",
    "agent": agent_report.render,
    "container": lambda R: container_report.render(R) + "\n",
    "cluster": cluster_report.render,
}


def committed(suite):
    return sorted(glob.glob(os.path.join(HERE, "results", f"*-{suite}.json")))


def load(path):
    with open(path) as f:
        return json.load(f)


class CommittedReports(unittest.TestCase):
    def test_each_committed_report_is_its_scripts_output(self):
        for suite, render in RENDER.items():
            paths = committed(suite)
            self.assertTrue(paths, f"no committed {suite} results")
            for path in paths:
                with self.subTest(path=os.path.basename(path)), open(path[:-5] + ".md") as f:
                    self.assertEqual(render(load(path)), f.read())


class FailedFiguresFail(unittest.TestCase):
    def test_cuda_checksum_mismatch_fails(self):
        R = load(committed("cuda")[0])
        self.assertTrue(report_common.passed(cuda_checks(R)))
        bad = copy.deepcopy(R)
        bad["tests"]["size_8"]["cold"]["intact"] = False
        failed = [c for c in cuda_checks(bad) if not c["ok"]]
        self.assertEqual([(c["scenario"], c["check"]) for c in failed], [("size_8", "8 GiB: data intact (checksum)")])

    def test_cuda_lock_that_does_not_time_out_fails(self):
        bad = load(committed("cuda")[0])
        bad["tests"]["lock_timeout"]["short_lock"].update(ok=True, timeout=False)
        self.assertFalse(report_common.passed(cuda_checks(bad)))

    def test_agent_checksum_mismatch_fails(self):
        R = load(committed("agent")[0])
        self.assertTrue(report_common.passed(agent_report.checks(R)))
        R["cycles"][0]["verify"]["ok"] = "0"
        self.assertFalse(report_common.passed(agent_report.checks(R)))

    def test_container_losses_not_identical_fail(self):
        doc = load(committed("container")[0])
        run = doc["runs"]["B"]["results"]
        self.assertTrue(container_report.passed(run))
        run["experiments"]["3b-checkpoint-restore-other-gpu-cgroups-ignore"]["compare"]["identical"] = False
        self.assertFalse(container_report.passed(run))

    def test_container_failed_restore_fails_without_an_exception(self):
        doc = load(committed("container")[0])
        self.assertFalse(container_report.passed(doc["runs"]["A"]["results"]))


if __name__ == "__main__":
    unittest.main()
