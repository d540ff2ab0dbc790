"""Tests of the CPU variant of modelserver.py (no GPU, standard library only)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CPUModelServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.port = free_port()
        cls.weights = os.path.join(cls.dir.name, "w.bin")
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "modelserver.py"), "--gib", "0.01", "--weights", cls.weights,
             "--device", "cpu", "--host", "127.0.0.1", "--port", str(cls.port)],
            stdout=subprocess.PIPE, text=True)
        cls.events = []
        for line in cls.proc.stdout:
            cls.events.append(json.loads(line))
            if cls.events[-1]["event"] == "ready":
                break

    @classmethod
    def tearDownClass(cls):
        cls.proc.kill()
        cls.proc.wait()
        cls.proc.stdout.close()
        cls.dir.cleanup()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def post(self, body):
        req = urllib.request.Request(self.url("/v1/completions"), data=json.dumps(body).encode(), method="POST")
        return urllib.request.urlopen(req, timeout=30)

    def test_weights_written_and_ready_reported(self):
        self.assertEqual(os.path.getsize(self.weights), int(0.01 * (1 << 30)))
        ready = self.events[-1]
        self.assertEqual(ready["event"], "ready")
        for key in ("generate_s", "load_s", "warm_up_s", "ready_s", "weights"):
            self.assertIn(key, ready)
        self.assertEqual(urllib.request.urlopen(self.url("/health"), timeout=5).read(), b"ok")

    def test_completion(self):
        got = json.loads(self.post({"prompt": "hi", "max_tokens": 5}).read())
        self.assertEqual(got["tokens"], 5)
        self.assertEqual(len(got["text"].split()), 5)
        self.assertEqual(got["weights"], self.events[-1]["weights"])

    def test_stream_is_server_sent_events(self):
        resp = self.post({"prompt": "hi", "max_tokens": 3, "stream": True})
        self.assertEqual(resp.headers["Content-Type"], "text/event-stream")
        lines = [l for l in resp.read().decode().split("\n") if l]
        self.assertEqual(len(lines), 4)
        self.assertEqual([json.loads(l[6:])["index"] for l in lines[:3]], [0, 1, 2])
        self.assertEqual(lines[3], "data: [DONE]")

    def stats(self):
        return json.loads(urllib.request.urlopen(self.url("/stats"), timeout=5).read())

    def test_stats_count_answers_by_id(self):
        before = self.stats()
        got = json.loads(self.post({"prompt": "hi", "max_tokens": 2, "id": "a"}).read())
        self.post({"prompt": "hi", "max_tokens": 2, "id": "a"}).read()
        self.post({"prompt": "hi", "max_tokens": 2, "id": "b", "stream": True}).read()
        after = self.stats()
        self.assertEqual(after["completions"] - before["completions"], 3)
        self.assertEqual(after["ids"]["a"] - before["ids"].get("a", 0), 2)
        self.assertEqual(after["ids"]["b"] - before["ids"].get("b", 0), 1)
        # The answer and the stats name the same process, the one that logged it at start.
        self.assertEqual((got["pid"], got["token"]), (after["pid"], after["token"]))
        self.assertEqual((after["pid"], after["token"]), (self.proc.pid, self.events[0]["token"]))

    def test_bad_request(self):
        with self.assertRaises(urllib.error.HTTPError) as e:
            self.post({"max_tokens": 2, "id": 7})
        self.assertEqual(e.exception.code, 400)
        with self.assertRaises(urllib.error.HTTPError) as e:
            self.post({"max_tokens": 0})
        self.assertEqual(e.exception.code, 400)


class GenerateOnlyTest(unittest.TestCase):
    def test_writes_the_file_once_and_exits(self):
        with tempfile.TemporaryDirectory() as d:
            w = os.path.join(d, "w.bin")
            cmd = [sys.executable, os.path.join(HERE, "modelserver.py"), "--generate-only", "--gib", "0.002", "--weights", w]
            first = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout)
            self.assertEqual(first["event"], "generated")
            self.assertEqual(os.path.getsize(w), int(0.002 * (1 << 30)))
            self.assertFalse(os.path.exists(w + ".tmp"))
            # A file of the right size is kept: a server started later writes nothing.
            again = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout)
            self.assertEqual(again["generate_s"], 0.0)


if __name__ == "__main__":
    unittest.main()
