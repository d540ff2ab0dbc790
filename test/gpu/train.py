#!/usr/bin/env python3
"""Deterministic PyTorch training for the container tests (container_suite.py): runs inside a
container started by our shim, on the GPU the shim exposes (CUDA_VISIBLE_DEVICES).

An MLP trained with SGD on batches drawn from a per-step seeded generator, with deterministic
algorithms and no TF32, so that two runs with the same SEED give bit-identical losses on the
same GPU model. A ballast tensor (BALLAST_GIB) holds a known pattern; its checksum is verified
at the end. Every step appends one JSON line to $LOSSES (loss as float.hex(), wall time, the
GPU's UUID as CUDA reports it) with the writer's identity: its PID, a random token drawn
once per process and its start counter (START_FILE, when set, counts the starts of the
workload: a restarted process has a new token and a higher count, a suspended, moved or
restored one the same). At the end a line with "done". Nothing else: a suspended, moved or
restored process just goes on writing.
"""
import json
import os
import secrets
import time

import torch

SEED = int(os.environ.get("SEED", "1"))
STEPS = int(os.environ.get("STEPS", "600"))
PACE = float(os.environ.get("PACE", "0.02"))
BALLAST_GIB = float(os.environ.get("BALLAST_GIB", "1"))
LOSSES = os.environ["LOSSES"]
START_FILE = os.environ.get("START_FILE", "")
TOKEN = secrets.token_hex(8)


def count_start():
    """The number of this start: START_FILE's count plus one, written back (0 without one)."""
    if not START_FILE:
        return 0
    try:
        with open(START_FILE) as f:
            n = int(f.read().strip() or 0) + 1
    except FileNotFoundError:
        n = 1
    with open(START_FILE + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(START_FILE + ".tmp", START_FILE)
    return n


START = count_start()
ME = {"pid": os.getpid(), "token": TOKEN, "start": START}

torch.manual_seed(SEED)
torch.use_deterministic_algorithms(True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda:0")
uuid = str(torch.cuda.get_device_properties(0).uuid)

model = torch.nn.Sequential(
    torch.nn.Linear(1024, 4096), torch.nn.ReLU(),
    torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
    torch.nn.Linear(4096, 10),
).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

n = int(BALLAST_GIB * (1 << 30)) // 4
ballast = torch.arange(n, dtype=torch.int32, device=dev)
ballast.remainder_(65521)  # in place: a ballast of 60% of the GPU has no room for a copy


def checksum(t):
    """The ballast's sum, in chunks: a cast of the whole tensor would need twice its memory."""
    return sum(int(c.sum(dtype=torch.int64)) for c in t.split(1 << 28))


want = checksum(ballast)
torch.cuda.synchronize()
torch.cuda.empty_cache()  # the temporaries' memory goes back: what is parked is model + ballast

out = open(LOSSES, "a", buffering=1)
out.write(json.dumps({"started": True, **ME, "uuid": uuid, "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "ballast_bytes": n * 4, "t": time.time()}) + "\n")
g = torch.Generator(device=dev)
for step in range(STEPS):
    g.manual_seed(SEED * 1_000_003 + step)
    x = torch.randn(512, 1024, generator=g, device=dev)
    y = torch.randint(0, 10, (512,), generator=g, device=dev)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    out.write(json.dumps({"step": step, "loss": loss.item().hex(), "t": time.time(),
                          "uuid": str(torch.cuda.get_device_properties(0).uuid), **ME}) + "\n")
    if PACE > 0:
        time.sleep(PACE)
got = checksum(ballast)
out.write(json.dumps({"done": True, "ballast_ok": got == want, "t": time.time(), **ME}) + "\n")
out.close()
