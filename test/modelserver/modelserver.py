#!/usr/bin/env python3
"""A small HTTP inference server for the scale-to-zero tests and benchmark.

It does what a model server does before it can answer, at a size you choose: it writes
--gib GiB of weights to --weights (once; kept for later starts), reads them back, and with
--device cuda initialises CUDA, copies the weights to the GPU, allocates working memory and
warms up with a few matrix products. Only then does /health answer 200. The time of each
step goes to stdout as one JSON line ("ready"), so a benchmark can tell a cold start
(container start + all of this) from a wake (a resume: none of this again).

  --device cpu   standard library only (the CPU tiers: a real node without a GPU)
  --device cuda  PyTorch with CUDA (the GPU machine)

Endpoints:
  GET  /health              200 "ok" once ready, 503 before
  POST /v1/completions      {"prompt": "...", "max_tokens": N, "stream": false|true}
                            -> {"text": ..., "tokens": N, "weights": "<checksum>"}; with
                            "stream": true, server-sent events, one per token, each flushed,
                            then "data: [DONE]"; an optional "id" is counted (see /stats)
  GET  /stats               {"pid": ..., "token": ..., "completions": N, "ids": {id: times answered}}:
                            what this process answered since it started; the token is random at
                            start, so a restarted server (same pid in a new container) differs
Every completion's answer names the process too ("pid", "token"): a test tells a wake (the same
process) from a restart.
Each token is a step of work on the loaded weights (a slice on the CPU, a matrix product on
the GPU), so a suspended process cannot answer.
"""
import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import time

BLOCK = 1 << 20  # 1 MiB


def log(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def generate(path, gib, seed):
    """Writes gib GiB of deterministic pseudo-random weights to path unless it is there."""
    size = int(gib * (1 << 30))
    if os.path.exists(path) and os.path.getsize(path) == size:
        return 0.0
    start = time.monotonic()
    block = bytearray()
    h = hashlib.sha256(str(seed).encode())
    while len(block) < BLOCK:
        h.update(b"w")
        block += h.digest()
    block = memoryview(bytes(block[:BLOCK]))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        left = size
        i = 0
        while left > 0:
            n = min(BLOCK, left)
            # Each block differs in its first 8 bytes, so no two pages are alike.
            if n >= 8:
                f.write(i.to_bytes(8, "little"))
                f.write(block[8:n])
            else:
                f.write(block[:n])
            left -= n
            i += 1
    os.replace(tmp, path)
    return time.monotonic() - start


class CPUModel:
    """The weights in host memory; a token reads a slice of them."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.weights = f.read()
        self.checksum = hashlib.sha256(self.weights[: 1 << 20]).hexdigest()[:16]

    def warm_up(self):
        # Touch every page once, as a first forward pass would.
        s = 0
        for off in range(0, len(self.weights), 4096):
            s ^= self.weights[off]
        return s

    def token(self, i):
        off = (i * 7919 * BLOCK) % max(1, len(self.weights) - 64)
        return self.weights[off : off + 4].hex()


class CUDAModel:
    """The weights on the GPU; a token is a matrix product over them."""

    def __init__(self, path, work_gib):
        import torch

        self.torch = torch
        t0 = time.monotonic()
        torch.cuda.init()
        torch.zeros(1, device="cuda")
        self.init_s = time.monotonic() - t0
        size = os.path.getsize(path)
        host = torch.from_file(path, shared=False, size=size, dtype=torch.uint8)
        self.weights = host.to("cuda")
        del host
        self.work = torch.empty(int(work_gib * (1 << 30)), dtype=torch.uint8, device="cuda")
        n = 1024
        self.a = self.weights[: n * n * 2].view(torch.float16).view(n, n).nan_to_num().clamp(-1, 1)
        # The same checksum as the CPU variant's, without numpy (PyTorch does not need it).
        self.checksum = hashlib.sha256(bytes(self.weights[: 1 << 20].cpu().tolist())).hexdigest()[:16]

    def warm_up(self):
        for _ in range(10):
            self.a = (self.a @ self.a).clamp(-1, 1)
        self.torch.cuda.synchronize()
        return float(self.a[0, 0])

    def token(self, i):
        b = (self.a @ self.a).clamp(-1, 1)
        self.torch.cuda.synchronize()
        return "%04x" % (int(abs(float(b[i % 1024, i % 1024])) * 65535) & 0xFFFF)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kybernate-modelserver"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with self.server.lock:
                stats = {"pid": os.getpid(), "token": self.server.token, "completions": self.server.completions,
                         "ids": dict(self.server.ids)}
            return self.reply(200, json.dumps(stats))
        if self.path != "/health":
            return self.reply(404, '{"error": "not found"}')
        if self.server.model is None:
            return self.reply(503, "loading", "text/plain")
        return self.reply(200, "ok", "text/plain")

    def do_POST(self):
        if self.path != "/v1/completions":
            return self.reply(404, '{"error": "not found"}')
        model = self.server.model
        if model is None:
            return self.reply(503, '{"error": "loading"}')
        try:
            n = int(self.headers.get("Content-Length", "0"))
            req = json.loads(self.rfile.read(n) or b"{}")
            tokens = int(req.get("max_tokens", 8))
            if not 0 < tokens <= 4096:
                raise ValueError("max_tokens must be 1..4096")
            rid = req.get("id")
            if rid is not None and not isinstance(rid, str):
                raise ValueError("id must be a string")
        except (ValueError, TypeError, AttributeError) as e:
            return self.reply(400, json.dumps({"error": "bad request: %s" % e}))
        with self.server.lock:  # one forward pass at a time, as on one GPU
            self.server.completions += 1
            if rid is not None:
                self.server.ids[rid] = self.server.ids.get(rid, 0) + 1
            if not req.get("stream"):
                text = " ".join(model.token(i) for i in range(tokens))
                return self.reply(200, json.dumps({"text": text, "tokens": tokens, "weights": model.checksum,
                                                   "pid": os.getpid(), "token": self.server.token}))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(tokens):
                self.chunk("data: %s\n\n" % json.dumps({"token": model.token(i), "index": i}))
            self.chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

    def chunk(self, s):
        data = s.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0, help="GiB of weights (default 1)")
    p.add_argument("--weights", default="/tmp/kybernate-weights.bin", help="weights file, written when missing")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--work-gib", type=float, default=0.5, help="GPU working memory beside the weights (cuda)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--generate-only", action="store_true",
                   help="write the weights file (when missing), flush it to disk and exit: a benchmark prepares it "
                        "before the timed start")
    a = p.parse_args(argv)
    if a.gib <= 0:
        p.error("--gib must be positive")
    if a.generate_only:
        gen_s = generate(a.weights, a.gib, a.seed)
        t = time.monotonic()
        fd = os.open(a.weights, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log("generated", path=a.weights, gib=a.gib, generate_s=round(gen_s, 3), fsync_s=round(time.monotonic() - t, 3))
        return 0

    started = time.monotonic()
    server = http.server.ThreadingHTTPServer((a.host, a.port), Handler)
    server.model = None
    server.lock = threading.Lock()
    server.token = os.urandom(8).hex()
    server.completions, server.ids = 0, {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log("listening", port=server.server_address[1], device=a.device, gib=a.gib, pid=os.getpid(), token=server.token)

    gen_s = generate(a.weights, a.gib, a.seed)
    t = time.monotonic()
    model = CPUModel(a.weights) if a.device == "cpu" else CUDAModel(a.weights, a.work_gib)
    load_s = time.monotonic() - t
    t = time.monotonic()
    model.warm_up()
    warm_s = time.monotonic() - t
    server.model = model
    log("ready", generate_s=round(gen_s, 3), load_s=round(load_s, 3), cuda_init_s=round(getattr(model, "init_s", 0.0), 3),
        warm_up_s=round(warm_s, 3), ready_s=round(time.monotonic() - started, 3), weights=model.checksum)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
