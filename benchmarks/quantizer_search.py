"""Nearest-code search: chunked ``||e||^2 - 2 r.e`` matmul against naive ``torch.cdist`` + argmin.

Paper scale by default: K=16384 codes of d=32, 729 x 64 query vectors (a batch of 64 images at 27x27).
Each method runs in its own process so its peak resident memory can be read back cleanly.

    python benchmarks/quantizer_search.py [--codes 16384] [--dim 32] [--vectors 46656] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(method: str, codes: int, dim: int, vectors: int, repeats: int, chunk: int) -> dict:
    import torch

    from dualtoken.models.quantizer import nearest_codes

    g = torch.Generator().manual_seed(0)
    x, book = torch.randn(vectors, dim, generator=g), torch.randn(codes, dim, generator=g)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    search = {
        "chunked": lambda: nearest_codes(x, book, chunk_size=chunk or None),
        "cdist": lambda: torch.cdist(x, book).argmin(1),
    }[method]
    result = search()  # warm-up (and the result for the agreement check)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        search()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "seconds": min(times), "peak_extra_mib": (peak - baseline_rss) / 1024,
            "checksum": int(result.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--vectors", type=int, default=729 * 64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=0, help="rows per chunk; 0: the library default")
    parser.add_argument("--child", choices=["chunked", "cdist"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.codes, args.dim, args.vectors, args.repeats, args.chunk)))
        return
    rows = {}
    for method in ("cdist", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--codes", str(args.codes), "--dim",
                              str(args.dim), "--vectors", str(args.vectors), "--repeats", str(args.repeats),
                              "--chunk", str(args.chunk)], capture_output=True, text=True, check=True)
        rows[method] = json.loads(out.stdout)
    base, ours = rows["cdist"], rows["chunked"]
    print(f"K={args.codes} d={args.dim} N={args.vectors} chunk={args.chunk or 'default'}")
    for r in (base, ours):
        print(f"  {r['method']:8s} {r['seconds'] * 1000:9.1f} ms   peak +{r['peak_extra_mib']:8.1f} MiB")
    print(f"  chunked / cdist: time {ours['seconds'] / base['seconds']:.2f}x, "
          f"peak memory {ours['peak_extra_mib'] / max(base['peak_extra_mib'], 1e-9):.2f}x, "
          f"same codes: {ours['checksum'] == base['checksum']}")


if __name__ == "__main__":
    main()
