"""Tests of cluster_tiers.py and its report section without a cluster: scenario 9's agent
flags and the rows of an image that went on to the object store."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_node  # noqa: E402
import cluster_report  # noqa: E402
import cluster_tiers  # noqa: E402


class ObjectStoreTest(unittest.TestCase):
    def test_agent_flags_replace_and_add(self):
        got = cluster_node.with_flags(["/kybernate-agent", "--disk-tier-idle=30m", "--v=2"], cluster_tiers.OBJECT_STORE_FLAGS)
        self.assertEqual(got, ["/kybernate-agent", "--disk-tier-idle=5s", "--v=2",
                               "--object-store-secret=kybernate-system/kybernate-object-store"])

    def test_report_shows_the_upload_only_for_scenario_9(self):
        s = {"title": "t", "tier_flags": {}, "ballast_gib": 8, "sleep": {"storage": {}}, "wake": {"resume_s": 3.1, "restored_event": "Restored from ObjectStore (x)"}}
        disk = "\n".join(cluster_report.tiers_report(s, 8))
        self.assertIn("## Scenario 8: t", disk)
        self.assertNotIn("UploadedToObjectStore", disk)
        self.assertIn("the pod has 8 GiB of tensors beside PyTorch", disk)
        s9 = dict(s, agent_flags=cluster_tiers.OBJECT_STORE_FLAGS,
                  upload={"uploaded_after_spill_s": 7.5, "event": "Uploaded 12 files", "storage": {"storedBytes": 42, "location": "s3://b/k"}})
        got = "\n".join(cluster_report.tiers_report(s9, 9))
        self.assertIn("## Scenario 9: t", got)
        self.assertIn("| SpilledToDisk -> UploadedToObjectStore Event | 7.5 s |", got)
        self.assertIn("UploadedToObjectStore: Uploaded 12 files", got)
        self.assertIn("--disk-tier-idle", got)


if __name__ == "__main__":
    unittest.main()
