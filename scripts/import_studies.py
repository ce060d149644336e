"""Import NIfTI studies (BraTS 2023/2021 or MSD layout) into a DICOMweb archive over STOW-RS.

    .venv/bin/python scripts/import_studies.py data/sample --url http://127.0.0.1:8042/dicom-web [--labels brats2024_post]

Each study becomes one DICOM study: an MR series per modality and, where the study ships a
ground-truth label, a DICOM SEG (its segments those of ``--labels``, the server's label set). Studies the archive already holds in full are skipped, so
re-running never duplicates. Credentials: MONAI_LABEL_DICOMWEB_USERNAME / _PASSWORD.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "brats_label"))

from lib.config import BRATS_2023, DEFAULT_LABEL_SET, LABEL_SETS  # noqa: E402
from lib.dicom.archive import Archive  # noqa: E402
from lib.dicom.study_import import content_seed, instance_count, study_datasets, study_uid  # noqa: E402
from lib.errors import ArchiveUnavailable  # noqa: E402
from lib.labels.label_set import LabelSet  # noqa: E402
from lib.studies.folder_layout import find_studies  # noqa: E402

VERSION = "0.1.0"
STOW_BATCH = 64  # instances per STOW-RS request


def import_studies(studies: Path, archive: Archive, progress: bool = True, label_set: LabelSet = BRATS_2023) -> dict:
    sources, problems = find_studies(studies)
    for problem in problems:
        print(f"skipped {problem.study_id}: {problem.reason}", file=sys.stderr)
    counts = {"imported": 0, "already there": 0, "refused": len(problems)}
    for source in tqdm(sources, desc="importing studies", unit="study", disable=not progress, file=sys.stderr):
        seed = content_seed(source)
        if archive.study_instance_count(study_uid(seed)) == instance_count(source):
            counts["already there"] += 1  # checked before converting anything
            continue
        datasets = study_datasets(source, seed, VERSION, label_set)
        for start in range(0, len(datasets), STOW_BATCH):
            archive.store(datasets[start : start + STOW_BATCH])
        counts["imported"] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", type=Path, help="folder of studies (BraTS or MSD layout)")
    parser.add_argument("--url", required=True, help="DICOMweb root of the archive, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--labels", choices=sorted(LABEL_SETS), default=DEFAULT_LABEL_SET, help="the label set of the ground truth (the server's --conf labels)")
    args = parser.parse_args(argv)
    archive = Archive(args.url, os.environ.get("MONAI_LABEL_DICOMWEB_USERNAME", ""), os.environ.get("MONAI_LABEL_DICOMWEB_PASSWORD", ""))
    try:
        counts = import_studies(args.studies, archive, label_set=LABEL_SETS[args.labels])
    except (FileNotFoundError, ArchiveUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
