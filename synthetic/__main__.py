"""Generate synthetic BraTS-like studies.

    python -m synthetic --out data/studies --cases 12 --labelled 4 --seed 0

Case i is the same for a given seed whatever else is generated, so a held-out set is just other
indices (``--first-index 1000``) or another seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Tuple

from tqdm import tqdm

from .cohort import DEFAULT_KIND_MIX, DEFAULT_SITE_MIX, KINDS, SITES, design_case, parse_mix
from .follow_up import generate_follow_up, patients_table
from .head import generate_raw_study
from .layouts import LAYOUTS, case_name, write_msd_dataset_json, write_raw_study, write_study
from .montage import POST_TREATMENT_COLOURS, POST_TREATMENT_NAMES, save_montage
from .post_treatment import generate_post_treatment
from .study import generate_study, varied_acquisition


def _make_one(args: tuple) -> Tuple[str, Optional[dict]]:
    index, seed, spacing, layout, with_label, out_dir, label_dir, montage_dir, varied, cohort, raw, visit, post = args
    if post:  # after surgery, labelled as BraTS 2024's post-treatment task (synthetic/post_treatment.py)
        study = generate_post_treatment(seed, index, visit + 1, spacing)
        write_study(study, Path(out_dir), layout, with_label and visit == 0, Path(label_dir) if label_dir else None)
        if montage_dir:
            title = f"{study.case_id}  (seed {seed}, post-operative scan {visit + 1})"
            save_montage(study.images, study.label, Path(montage_dir) / f"{study.case_id}.png", title, colours=POST_TREATMENT_COLOURS, names=POST_TREATMENT_NAMES)
        return study.case_id, None
    if visit:  # a later scan of patient ``index`` (synthetic/follow_up.py): unlabelled, its truth to --ground-truth
        follow_up = generate_follow_up(seed, index, visit, spacing)
        write_study(follow_up, Path(out_dir), layout, False, Path(label_dir) if label_dir else None)
        return follow_up.case_id, None
    if raw:  # a whole head as the scanner writes it (1 mm T1c; synthetic/head.py)
        design = design_case(seed, index, *cohort) if cohort else None
        head = generate_raw_study(seed, index, case_id=f"{RAW_CASE_PREFIX}{index:05d}", design=design)
        write_raw_study(head, Path(out_dir), with_label, Path(label_dir) if label_dir else None)
        return head.case_id, design.record() if design else None
    quality = varied_acquisition(seed, index) if varied else {}
    design = design_case(seed, index, *cohort) if cohort else None
    study = generate_study(seed, index, spacing, case_id=case_name(layout, index), design=design, **quality)
    write_study(study, Path(out_dir), layout, with_label, Path(label_dir) if label_dir else None)
    if montage_dir:
        kind = f", {design.kind} at {design.site}" if design else ""
        title = f"{study.case_id}  (seed {seed}, WT radius {study.shape.whole_radius_mm:.0f} mm{kind})"
        save_montage(study.images, study.label, Path(montage_dir) / f"{study.case_id}.png", title)
    return study.case_id, design.record() if design else None


RAW_CASE_PREFIX = "Head-"  # raw studies are named apart from the BraTS-prepared ones


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
    parser.add_argument("--cohort", action="store_true", help="a varied cohort: tumour kinds and acquisition sites in a mix (synthetic/cohort.py)")
    parser.add_argument("--kinds", default=None, help="the kinds' mix, e.g. typical=0.4,low_grade=0.15,small=0.05 (implies --cohort)")
    parser.add_argument("--sites", default=None, help="the sites' mix, e.g. 3t_3d=0.5,15t_2d=0.3,older_3mm=0.2 (implies --cohort)")
    parser.add_argument("--manifest", type=Path, default=None, help="write each case's kind, site and acquisition to this JSON file")
    parser.add_argument(
        "--raw", type=int, default=0, help="the last N studies are whole heads as a scanner writes them (1 mm, series in their own planes, motion, bias; brats2023 layout)"
    )
    parser.add_argument(
        "--follow-ups",
        type=int,
        default=0,
        help="also N later scans of each patient, unlabelled (brats2023 names -001, -002...; their truth goes to --ground-truth), and patients.csv",
    )
    parser.add_argument(
        "--post-treatment",
        action="store_true",
        help="post-operative studies labelled in BraTS 2024's post-treatment values (1 NETC, 2 SNFH, 3 ET, 4 resection cavity; "
        "the server's --conf labels brats2024_post), named -001; with --follow-ups, later post-operative scans",
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if args.labelled is None:
        args.labelled = args.cases
    if not 0 <= args.labelled <= args.cases:
        parser.error(f"--labelled must be between 0 and --cases ({args.cases})")
    if not 0 <= args.raw <= args.cases:
        parser.error(f"--raw must be between 0 and --cases ({args.cases})")
    if args.raw and args.layout != "brats2023":
        parser.error("--raw studies are written in the brats2023 layout (one file per series, each on its own grid)")
    if args.post_treatment and (args.layout != "brats2023" or args.raw or args.cohort or args.kinds or args.sites or args.varied_acquisition):
        parser.error("--post-treatment studies are BraTS 2023-layout prepared studies (no --raw, --cohort or --varied-acquisition)")
    if args.follow_ups and (args.layout != "brats2023" or args.raw or args.cohort or args.kinds or args.sites or args.varied_acquisition):
        parser.error("--follow-ups are BraTS 2023 prepared studies of the default kind (no --raw, --cohort or --varied-acquisition)")
    if args.follow_ups < 0:
        parser.error("--follow-ups must be 0 or more")
    if args.spacing <= 0:
        parser.error("--spacing must be positive (mm)")
    args.cohort_mix = None
    if args.cohort or args.kinds or args.sites:
        try:
            kinds = parse_mix(args.kinds, KINDS, "tumour kind") if args.kinds else DEFAULT_KIND_MIX
            sites = parse_mix(args.sites, SITES, "site") if args.sites else DEFAULT_SITE_MIX
        except ValueError as e:
            parser.error(str(e))
        args.cohort_mix = (kinds, sites)
    if args.cohort_mix and args.varied_acquisition:
        parser.error("--varied-acquisition and --cohort both set the acquisition: choose one")
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
            args.cohort_mix,
            i >= args.cases - args.raw,
            visit,
            args.post_treatment,
        )
        for i in range(args.cases)
        for visit in range(args.follow_ups + 1)
    ]
    desc = f"generating {args.cases} studies ({args.layout}, {args.spacing:g} mm)"
    if args.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            made = list(tqdm(pool.map(_make_one, jobs), total=len(jobs), desc=desc, unit="study", file=sys.stderr))
    else:
        made = [_make_one(job) for job in tqdm(jobs, desc=desc, unit="study", file=sys.stderr)]
    if args.manifest:
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        args.manifest.write_text(json.dumps({case: design for case, design in made}, indent=1))
    if args.cohort_mix:
        counts = Counter(design["kind"] for _, design in made if design)
        print("kinds: " + ", ".join(f"{kind} {counts[kind]}" for kind in sorted(counts)))
    if args.layout == "msd":
        write_msd_dataset_json(args.out)
    if args.follow_ups:
        first = 1 if args.post_treatment else 0  # post-operative scans are the patient's visits 1, 2, ...
        visits = [(args.first_index + i, first + v) for i in range(args.cases) for v in range(args.follow_ups + 1)]
        (args.out / "patients.csv").write_text(patients_table(visits))
    follow_ups = f", {args.cases * args.follow_ups} follow-ups and patients.csv" if args.follow_ups else ""
    print(f"{args.cases} studies ({args.labelled} labelled){follow_ups} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
