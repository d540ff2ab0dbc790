#!/usr/bin/env python3
"""A PyTorch process for the CUDA checkpoint suite (cuda_suite.py).

It fills --gib GiB of GPU memory with seeded random data, computes checksums
of it on the GPU, prints a READY line, then trains a small model in a loop
(--train) and answers line commands on stdin, one reply line each on stdout:

  status     STATUS step=<training steps so far> loss=<last loss>
  verify     VERIFY ok=<1|0> checksum=<hex> ms=<ms>   (recomputed vs. READY's)
  sleep S    SLEEPING cycles=<n>   after launching a GPU kernel that spins S
             seconds (needs --calibrate); replies before the kernel ends
  quit       exits

While the process is locked or checkpointed by the driver, its CUDA calls
block, so replies wait until it is resumed. All values are key=value without
spaces.
"""
import argparse
import hashlib
import os
import select
import sys
import time

import torch


def say(*parts):
    print(" ".join(str(p) for p in parts), flush=True)


def fill(gib, seed, dev):
    """Returns int32 chunks of at most 1 GiB holding gib GiB in total."""
    elems = int(gib * (1 << 30)) // 4
    elems = max(1024, elems // 1024 * 1024)  # checksum rows are 1024 wide
    per_chunk = (1 << 30) // 4
    chunks, i = [], 0
    while elems > 0:
        n = min(elems, per_chunk)
        g = torch.Generator(device=dev)
        g.manual_seed(seed * 1000003 + i)
        chunks.append(torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32, device=dev))
        elems -= n
        i += 1
    return chunks


def checksum(chunks):
    """Per chunk: the sum, and a position-weighted sum of 4 KiB rows, so that
    moved pages change it too. Computed on the GPU; int64 wraps alike every time."""
    out = []
    for c in chunks:
        rows = c.view(-1, 1024).sum(dim=1, dtype=torch.int64)
        w = torch.arange(1, rows.numel() + 1, device=c.device, dtype=torch.int64)
        out.append(torch.stack([c.sum(dtype=torch.int64), (rows * w).sum()]))
    sums = torch.stack(out).cpu().tolist()
    return hashlib.sha256(repr(sums).encode()).hexdigest()[:16]


def calibrate():
    """GPU clock cycles per second as torch.cuda._sleep counts them."""
    torch.cuda._sleep(1000)
    s = torch.cuda.Event(enable_timing=True)
    e = torch.cuda.Event(enable_timing=True)
    cycles = 200_000_000
    s.record()
    torch.cuda._sleep(cycles)
    e.record()
    e.synchronize()
    return cycles / (s.elapsed_time(e) / 1000.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--calibrate", action="store_true")
    a = ap.parse_args()

    dev = torch.device("cuda")
    t0 = time.time()
    torch.zeros(1, device=dev)
    init_s = time.time() - t0
    t0 = time.time()
    chunks = fill(a.gib, a.seed, dev)
    torch.cuda.synchronize()
    fill_s = time.time() - t0
    want = checksum(chunks)
    nbytes = sum(c.numel() * 4 for c in chunks)

    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(256, 1024, device=dev)
    y = torch.randn(256, 1, device=dev)
    cps = calibrate() if a.calibrate else 0.0

    say("READY", f"pid={os.getpid()}", f"bytes={nbytes}", f"chunks={len(chunks)}", f"checksum={want}",
        f"init_s={init_s:.3f}", f"fill_s={fill_s:.3f}", f"cycles_per_s={cps:.0f}",
        f"device={torch.cuda.get_device_name(0).replace(' ', '_')}")

    step, loss = 0, float("nan")
    fd, pending = sys.stdin.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0 if a.train else 0.05)
        if ready:
            data = os.read(fd, 4096)
            if not data:
                return  # the suite went away
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            cmd = line.decode().split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                return
            if cmd[0] == "status":
                say("STATUS", f"step={step}", f"loss={loss:.6f}", f"t={time.time():.3f}")
            elif cmd[0] == "verify":
                t0 = time.time()
                got = checksum(chunks)
                say("VERIFY", f"ok={int(got == want)}", f"checksum={got}", f"want={want}",
                    f"ms={(time.time() - t0) * 1000:.1f}")
            elif cmd[0] == "sleep":
                cycles = int(float(cmd[1]) * cps)
                torch.cuda._sleep(cycles)
                say("SLEEPING", f"cycles={cycles}", f"t={time.time():.3f}")
            else:
                say("ERROR", f"unknown_command={cmd[0]}")
        if a.train:
            opt.zero_grad(set_to_none=True)
            l = torch.nn.functional.mse_loss(model(x), y)
            l.backward()
            opt.step()
            loss = l.item()
            step += 1


if __name__ == "__main__":
    main()
