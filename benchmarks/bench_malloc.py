"""Training-step time under each allocator of animal_reid/fastmalloc.py, with ``--procs`` runs at once.

Each run is a child process doing ``--steps`` SGD steps of a timm backbone (random weights) on one random batch,
one torch thread, channels-last: the shape of a table-1 run on 2 CPU cores. Prints per-step seconds (the first
step is warm-up) and the user / sys CPU seconds of each child, for glibc's defaults, glibc huge pages and jemalloc.

    python benchmarks/bench_malloc.py --procs 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from animal_reid import fastmalloc

CHILD = """
import json, sys, time, timm, torch
torch.set_num_threads(1)
backbone, batch, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = timm.create_model(backbone, num_classes=0).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
out = []
for _ in range(steps):
    t = time.perf_counter(); m(x).pow(2).mean().backward(); opt.step(); opt.zero_grad()
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


def _env(mode: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", fastmalloc.APPLIED)}
    if mode == "system":
        return {**base, fastmalloc.SWITCH: "system"}
    # "hugetlb": the glibc huge-page fallback, even where jemalloc is installed
    return fastmalloc.fast_malloc_env(base, use_jemalloc=mode == "jemalloc")


def run_mode(mode: str, procs: int, argv: list[str]) -> dict:
    env = _env(mode)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(procs)]  # fmt: skip
    steps = [json.loads(c.communicate()[0]) for c in children]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    warm = [s for run in steps for s in run[1:]]
    return {
        "mode": mode, "allocator": env.get(fastmalloc.APPLIED, "glibc defaults"),
        "s_per_step": round(sum(warm) / len(warm), 2), "steps": [[round(s, 1) for s in run] for run in steps],
        "user_s": round(after.ru_utime - before.ru_utime, 1), "sys_s": round(after.ru_stime - before.ru_stime, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--modes", nargs="+", default=["system", "hugetlb", "jemalloc"])
    args = p.parse_args(argv)
    if "jemalloc" in args.modes and fastmalloc.find_jemalloc() is None:
        print("jemalloc not installed (apt-get install libjemalloc2): skipping that mode", file=sys.stderr)
        args.modes.remove("jemalloc")
    child = [args.backbone, str(args.batch), str(args.size), str(args.steps)]
    results = [run_mode(m, args.procs, child) for m in args.modes]
    base = results[0]["s_per_step"]
    for r in results:
        r["speed_vs_first"] = round(base / r["s_per_step"], 2)
        print(json.dumps(r))
    return results


if __name__ == "__main__":
    main()
