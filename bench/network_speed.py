"""Seconds per forward pass of the served networks on this machine's CPU, in the memory layout they are served in
(channels-last, ``lib/model/network.on_device``) against the default layout, interleaved in one run.

    .venv/bin/python bench/network_speed.py --weights seg.pt --refinement refinement.pt [--repeats 20]

One window of the cpu profile (what a click costs, ``interactive/click_reach``) and a whole brain at 2 mm (what an
auto-segmentation costs). Prints a table and writes ``bench/results/network_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "brats_label")]

import torch  # noqa: E402

from lib.config import CHANNELS, GUIDANCE_LABELS, PROFILES  # noqa: E402
from lib.model.network import load_network, sliding_window_inferer  # noqa: E402

BRAIN_AT_2MM = (80, 100, 80)  # a brain's box at the cpu profile's spacing


def timed(run: Callable[[], torch.Tensor], repeats: int) -> List[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="the segmentation model")
    parser.add_argument("--refinement", type=Path, required=True, help="the refinement model")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "network_speed.json")
    args = parser.parse_args()
    profile = PROFILES["cpu"]
    inferer = sliding_window_inferer(profile)
    rows: Dict[str, Dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for name, path, guided in (("segmentation", args.weights, False), ("refinement", args.refinement, True)):
        served = load_network(profile, path, torch.device("cpu"), guided=guided).eval()
        default = copy.deepcopy(served).to(memory_format=torch.contiguous_format)
        channels = len(CHANNELS) + (len(GUIDANCE_LABELS) if guided else 0)
        for shape_name, shape in (("one window", profile.roi_size), ("whole brain", BRAIN_AT_2MM)):
            x = torch.randn((1, channels, *shape), generator=generator)
            with torch.inference_mode():
                runs = {layout: (lambda net=net, x=x: inferer(x, net)) for layout, net in (("default", default), ("served", served))}
                for run in runs.values():
                    run()  # first calls set oneDNN up
                seconds: Dict[str, List[float]] = {"default": [], "served": []}
                for _ in range(args.repeats):  # interleaved: the machine's drift hits both alike
                    for layout, run in runs.items():
                        seconds[layout] += timed(run, 1)
                difference = float((runs["default"]() - runs["served"]()).abs().max())
            row = {f"{layout}_median_s": round(statistics.median(s), 3) for layout, s in seconds.items()}
            row["speed_up"] = round(row["default_median_s"] / row["served_median_s"], 2)
            row["max_logit_difference"] = float(f"{difference:.2e}")
            rows[f"{name}, {shape_name}"] = row
            print(
                f"{name + ', ' + shape_name:28} default {row['default_median_s']:.3f} s  served {row['served_median_s']:.3f} s  {row['speed_up']:.2f}x  logits within {difference:.1e}",
                flush=True,
            )
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "passes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
