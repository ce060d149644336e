"""Generate synthetic BraTS-like studies.

    python -m synthetic --out data/studies --cases 12 --labelled 4 --seed 0

Case i is the same for a given seed whatever else is generated, so a held-out set is just other
indices (``--first-index 1000``) or another seed.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from .layouts import LAYOUTS, case_name, write_msd_dataset_json, write_study
from .montage import save_montage
from .study import generate_study, varied_acquisition


def _make_one(args: tuple) -> str:
    index, seed, spacing, layout, with_label, out_dir, label_dir, montage_dir, varied = args
    quality = varied_acquisition(seed, index) if varied else {}
    study = generate_study(seed, index, spacing, case_id=case_name(layout, index), **quality)
    write_study(study, Path(out_dir), layout, with_label, Path(label_dir) if label_dir else None)
    if montage_dir:
        title = f"{study.case_id}  (seed {seed}, WT radius {study.shape.whole_radius_mm:.0f} mm)"
        save_montage(study.images, study.label, Path(montage_dir) / f"{study.case_id}.png", title)
    return study.case_id


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m synthetic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to write the studies into")
    parser.add_argument("--cases", type=int, default=12, help="number of studies")
    parser.add_argument("--labelled", type=int, default=None, help="how many of them carry a ground-truth label (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-index", type=int, default=0, help="index of the first case (held-out sets use other indices)")
    parser.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm: 1 gives the BraTS grid 240x240x155")
    parser.add_argument("--layout", choices=LAYOUTS, default="brats2023")
    parser.add_argument("--ground-truth", type=Path, default=None, help="also write the labels of unlabelled studies here (for simulated annotators)")
    parser.add_argument("--montage", type=Path, default=None, help="write a PNG montage per study into this folder")
    parser.add_argument("--varied-acquisition", action="store_true", help="vary tumour contrast and noise from case to case, as in a multi-site collection")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if args.labelled is None:
        args.labelled = args.cases
    if not 0 <= args.labelled <= args.cases:
        parser.error(f"--labelled must be between 0 and --cases ({args.cases})")
    if args.spacing <= 0:
        parser.error("--spacing must be positive (mm)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            args.first_index + i,
            args.seed,
            args.spacing,
            args.layout,
            i < args.labelled,
            str(args.out),
            str(args.ground_truth) if args.ground_truth else None,
            str(args.montage) if args.montage else None,
            args.varied_acquisition,
        )
        for i in range(args.cases)
    ]
    desc = f"generating {args.cases} studies ({args.layout}, {args.spacing:g} mm)"
    if args.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            list(tqdm(pool.map(_make_one, jobs), total=len(jobs), desc=desc, unit="study", file=sys.stderr))
    else:
        for job in tqdm(jobs, desc=desc, unit="study", file=sys.stderr):
            _make_one(job)
    if args.layout == "msd":
        write_msd_dataset_json(args.out)
    print(f"{args.cases} studies ({args.labelled} labelled) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
