"""Orthanc on PostgreSQL, two Orthancs on one database: one receives studies, the other serves the server.

Debian's postgresql (a cluster made here, ``scripts/local_postgres.py``) and orthanc-postgresql (the index
plugin, ``orthanc/postgresql.json``); the two Orthanc processes share the index and the storage folder.
Studies sent to the receiving Orthanc are listed by the server through the serving one, and a label saved on
the server goes to the archive as a SEG that the receiving Orthanc sees too.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests

from scripts.import_studies import import_studies
from scripts.local_orthanc import LocalOrthanc
from scripts.local_postgres import LocalPostgres
from tests.conftest import make_studies

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(receiving Orthanc, serving Orthanc), started one after the other on one PostgreSQL database."""
    folder = tmp_path_factory.mktemp("postgresql")
    database = LocalPostgres()
    receiving = LocalOrthanc(folder / "storage", folder / "receiving.log", postgresql_env=database.orthanc_env)
    serving = LocalOrthanc(folder / "storage", folder / "serving.log", password=receiving.password, postgresql_env=database.orthanc_env)
    yield receiving, serving
    receiving.stop()
    serving.stop()
    database.stop()


def _study_uids(orthanc: LocalOrthanc) -> set:
    answer = requests.get(f"{orthanc.dicomweb}/studies", auth=(orthanc.user, orthanc.password), timeout=30).json()
    return {s["0020000D"]["Value"][0] for s in answer}


def test_both_orthancs_use_the_postgresql_index(archive):
    for orthanc in archive:
        assert "PostgreSQLIndex" in str(orthanc.get("/system").json().get("DatabaseBackendPlugin")), "not SQLite"


def test_studies_received_by_one_orthanc_are_served_by_the_other_to_the_server(archive, server_factory, tmp_path_factory, tmp_path):
    receiving, serving = archive
    studies = make_studies(tmp_path_factory.mktemp("pg_studies"), cases=2, labelled=1, seed=31)
    import_studies(studies, receiving.archive(), progress=False)
    assert _study_uids(serving) == _study_uids(receiving) and len(_study_uids(serving)) == 2

    server = server_factory(serving.dicomweb, env=serving.credentials_env, workspace=tmp_path_factory.mktemp("pg_workspace"), dicomweb_refresh_s=0)
    listing = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]
    assert set(listing) == _study_uids(receiving)
    name = next(p.name for p in studies.iterdir() if p.is_dir() and not (p / f"{p.name}-seg.nii.gz").exists())
    unlabelled = receiving.study_uid_of(name)
    assert "final" not in listing[unlabelled]["labels"]
    assert sum("final" in entry["labels"] for entry in listing.values()) == 1, "the shipped ground truth, imported as SEG"

    later = make_studies(tmp_path_factory.mktemp("pg_later"), cases=1, labelled=0, seed=32)
    import_studies(later, receiving.archive(), progress=False)  # a study arriving while the server runs
    assert len(requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]) == 3

    reference = nib.load(str(studies / name / f"{name}-t1c.nii.gz"))
    label = np.zeros(reference.shape, np.uint8)
    label[30:40, 30:40, 20:26] = 2
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, reference.affine), str(path))
    with open(path, "rb") as f:
        saved = requests.put(f"{server.url}/datastore/label", params={"image": unlabelled, "tag": "final"}, data={"params": "{}"}, files={"label": f}, timeout=120)
    assert saved.status_code == 200, saved.text
    info = requests.get(f"{server.url}/datastore/label/info", params={"label": unlabelled, "tag": "final"}, timeout=60).json()
    assert info["archive"] == "stored"
    series = requests.get(f"{receiving.dicomweb}/studies/{unlabelled}/series", auth=(receiving.user, receiving.password), timeout=30).json()
    assert info["seg_series_uid"] in {s["0020000E"]["Value"][0] for s in series}, "the SEG the server stored through one Orthanc is in the other"
