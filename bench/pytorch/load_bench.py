"""PyTorch baseline for `ncp-native bench load --config sd15 --dtype F16`: load a 1.72 GB fp16 SD1.5 U-Net
safetensors file for float32 CPU inference, the way diffusers does it with torch_dtype=float32: the tensors are
read out of the mapped file (safetensors.torch.load_file copies them into fresh tensors) and cast to float32. PyTorch 1.13's CPU fp16 matmuls are not a usable alternative (no fp16 GEMM kernels).

Usage: /usr/bin/python3 bench/pytorch/load_bench.py [--reps 2]
The file is written first by a separate process (building the module), and each timed load runs in a fresh
process so its peak RSS is the load's own.
"""
import argparse
import json
import mmap
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def write_fp16(path):
    from unet import UNet2DConditionModel, sd15_config  # noqa: E402
    torch.manual_seed(0)
    sd = UNet2DConditionModel(sd15_config()).state_dict()
    header, offset, parts = {}, 0, []
    for name, t in sd.items():
        b = t.detach().to(torch.float16).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        parts.append(b)
        offset += len(b)
    js = json.dumps(header).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for b in parts:
            f.write(b)


def load(path):
    """Returns (seconds, peak RSS bytes, tensor count) of reading the file into float32 tensors. Putting them into a
    module is not timed (diffusers' low_cpu_mem_usage path assigns them to a module built on the meta device), which
    favours PyTorch."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        (n,) = struct.unpack("<Q", mm[:8])
        header = json.loads(mm[8:8 + n])
        base = 8 + n
        state = {}
        for name, info in header.items():
            a, b = info["data_offsets"]
            half = torch.from_numpy(np.frombuffer(mm, dtype=np.float16, count=(b - a) // 2, offset=base + a).copy())
            state[name] = half.reshape(info["shape"]).to(torch.float32)
    load_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return load_s, peak, len(state)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--write", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        write_fp16(args.write)
        return
    if args.file:
        s, peak, n = load(args.file)
        print(json.dumps({"seconds": s, "peak_rss_bytes": peak, "tensors": n}))
        return
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "unet.fp16.safetensors")
        subprocess.run([sys.executable, __file__, "--write", path], check=True)
        size = os.path.getsize(path)
        print(f"PyTorch {torch.__version__}: SD1.5 U-Net fp16 file {size / 1e9:.2f} GB -> float32 tensors")
        for _ in range(args.reps):
            out = subprocess.run([sys.executable, __file__, "--file", path], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout)
            print(f"load {r['seconds']:.2f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB ({r['tensors']} tensors)")


if __name__ == "__main__":
    main()
