"""Efficient Attention vs softmax (quadratic) attention: time and peak memory on the CPU.

Run by hand (not a test):  python benchmarks/bench_attention.py [--tokens 4096 16384 32768]
One attention call of PanSegNet's paper size (8 heads of 64 features), batch 1, forward only.
Both methods process the heads one after another (so softmax attention's N×N score matrix of
one head fits in memory) and use the same Q, K, V. Each measurement runs in a fresh process;
peak memory = peak resident set size minus the resident size before the call.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(method: str, tokens: int, heads: int, dim: int, repeats: int) -> dict:
    import torch

    from workflow_scripts.models.efficient_attention import efficient_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(heads, tokens, dim) for _ in range(3))

    def quadratic(q1, k1, v1):  # materialises the N×N matrix, as softmax attention does
        return torch.softmax(q1 @ k1.transpose(-2, -1) / dim**0.5, dim=-1) @ v1

    fn = efficient_attention if method == "efficient" else quadratic
    with torch.no_grad():
        fn(q[0, :256], k[0, :256], v[0, :256])  # warm-up
        base = rss_mb()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for h in range(heads):
                fn(q[h], k[h], v[h])
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(method=method, tokens=tokens, seconds=min(times), peak_extra_mb=round(peak - base, 1),
                threads=torch.get_num_threads())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 32768])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.heads, args.dim, args.repeats)))
        return
    rows = []
    for n in args.tokens:
        for method in ("efficient", "softmax"):
            out = subprocess.run([sys.executable, __file__, "--one", method, str(n), "--heads", str(args.heads),
                                  "--dim", str(args.dim), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\n| tokens | efficient s | softmax s | speed-up | efficient MB | softmax MB | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.tokens:
        e = next(r for r in rows if r["tokens"] == n and r["method"] == "efficient")
        s = next(r for r in rows if r["tokens"] == n and r["method"] == "softmax")
        print(f"| {n} | {e['seconds']:.3f} | {s['seconds']:.3f} | {s['seconds'] / e['seconds']:.0f}× "
              f"| {e['peak_extra_mb']:.0f} | {s['peak_extra_mb']:.0f} | "
              f"{e['peak_extra_mb'] / max(s['peak_extra_mb'], 1e-9):.3f} |")


if __name__ == "__main__":
    main()
