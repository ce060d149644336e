"""Fixtures that start the real things: generated studies on disk and the MONAI Label server.

Studies are generated at 2 mm (120x120x78) so the suite stays fast on two CPU cores; the app's CPU
profile works at 2 mm, so nothing is resampled away that a 1 mm study would exercise differently,
except in the tests that generate 1 mm studies on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import pytest

from scripts.local_orthanc import LocalOrthanc
from scripts.local_server import LocalServer as Server
from synthetic.__main__ import main as generate

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "brats_label"
ARTIFACTS = REPO / "test-artifacts"
# Training patch for tests of the loop around training (promotion, retrain trigger, progress, distributed engine,
# seeding, early stopping), not of the model: validation and promotion still see whole studies.
LOOP_PATCH = "32,32,32"


def make_studies(folder: Path, cases: int, labelled: int, seed: int = 7, spacing: float = 2.0, layout: str = "brats2023", **kw) -> Path:
    args = ["--out", str(folder), "--cases", str(cases), "--labelled", str(labelled), "--seed", str(seed), "--spacing", str(spacing), "--layout", layout, "--workers", "1"]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert generate(args) == 0
    return folder


@pytest.fixture(scope="session")
def studies_2mm(tmp_path_factory) -> Path:
    """Six 2 mm studies, four of them labelled. Read-only: copy it before changing anything."""
    return make_studies(tmp_path_factory.mktemp("studies_2mm"), cases=6, labelled=4, seed=11)


@pytest.fixture
def studies_copy(studies_2mm, tmp_path) -> Path:
    target = tmp_path / "studies"
    shutil.copytree(studies_2mm, target, ignore=shutil.ignore_patterns(".brats_label"))
    return target


@pytest.fixture(scope="session")
def trained_weights(studies_2mm, tmp_path_factory):
    """A cpu-profile model trained for 20 epochs on the four labelled 2 mm studies with the app's trainer, on 48³
    patches (the profile's 64³ took a quarter longer for no test's benefit). 12 epochs
    were enough before the sample's necrotic cores were BraTS-sized: since, 12 leave TC at 0 (mean 0.25). It trains at
    5e-3, the rate it was made with: the product's first-model rate, 2e-3, needs a first model's full run (20 left it at
    validation Dice 0.20). What that rate gives a first model is measured by ``bench/first_model.py`` and the demo.
    Two patches a step (``samples_per_case`` 2): a batch of one 48³ patch falls under PyTorch's size threshold for
    oneDNN convolutions and runs the slow reference kernel (a step of two took 1.8 s, of one 3.3 s, on two idle cores);
    and validated every other epoch (the last included), a whole-study pass being a quarter of an epoch. Validation
    Dice 0.75 (epoch 16; 0.74 at the last)."""
    import shutil

    from lib.config import PROFILES, TrainSettings
    from lib.studies.folder_datastore import StudyFolderDatastore
    from lib.trainers.segmentation import BratsSegmentationTrainer

    work = tmp_path_factory.mktemp("trained")
    shutil.copytree(studies_2mm, work / "studies", ignore=shutil.ignore_patterns(".brats_label"))
    datastore = StudyFolderDatastore(work / "studies", work / "ws")
    trainer = BratsSegmentationTrainer(work / "model", PROFILES["cpu"], TrainSettings(max_epochs=20, learning_rate=5e-3), publish_path=work / "model.pt")
    request = {"device": "cpu", "max_epochs": 20, "seed": 0, "patch_size": "48,48,48", "samples_per_case": 2, "val_interval": 2}
    stats = trainer(request, datastore)  # seeded: the same model on every run
    assert stats["best_metric"] > 0.3, f"the fixture model did not learn: {stats}"
    return work / "model.pt"


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory) -> Iterator:
    started = []

    def start(studies, env: Optional[dict] = None, headers: Optional[dict] = None, port: Optional[int] = None, **conf) -> Server:
        """``port``: a free one if not given (a test whose OpenID provider must know the server's address first)."""
        log = tmp_path_factory.mktemp("server_logs") / "server.log"
        # studies are not opened on arrival unless a test asks (test_preparation.py): a server opening every study while
        # idle would compete with what each test measures, and change which studies a test finds never fetched.
        # Scoring makes 2 passes per study, not 8: it runs whenever a model is served, beside whatever the test does
        # (its ranking under a real model is tested in test_activelearning.py with the app's defaults)
        server = Server(studies, {"profile": "cpu", "prepare_on_arrival": "false", "scoring_samples": 2, **conf}, log, env, headers, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def put_final_label(server, study: str, label, affine, folder: Path, params: dict, headers: Optional[dict] = None):
    """``PUT /datastore/label`` of a label map (NIfTI) as the study's final label, as Slicer sends it; the answer."""
    import json

    import nibabel as nib
    import requests

    path = folder / f"{study}.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), str(path))
    with open(path, "rb") as f:
        return requests.put(
            f"{server.url}/datastore/label",
            params={"image": study, "tag": "final"},
            data={"params": json.dumps(params)},
            files={"label": ("label.nii.gz", f)},
            headers=headers,
            timeout=60,
        )


def dciodvfy_errors(path: Path) -> list:
    """Lines dciodvfy (dicom3tools) reports as errors against the DICOM standard; warnings are not errors."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[LocalOrthanc]:
    """A fresh, empty archive for each test module."""
    folder = tmp_path_factory.mktemp("orthanc")
    archive = LocalOrthanc(folder / "storage", folder / "orthanc.log")
    yield archive
    archive.stop()
