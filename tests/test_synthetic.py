"""The sample generator makes studies a BraTS user would recognise: nested regions, typical contrasts."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from synthetic import generate_study
from synthetic.anatomy import load_anatomy
from synthetic.glioma import EDEMA, ENHANCING, NECROTIC_CORE
from synthetic.montage import save_montage
from tests.conftest import make_studies

SEEDS = [(3, 0), (3, 1), (5, 2), (8, 3)]


@pytest.fixture(scope="module", params=SEEDS, ids=lambda p: f"seed{p[0]}-case{p[1]}")
def study(request):
    seed, index = request.param
    return generate_study(seed, index, spacing_mm=2.0)


def test_regions_nest_as_in_brats(study):
    label = study.label
    brain = load_anatomy(2.0).brain
    et, nc = label == ENHANCING, label == NECROTIC_CORE
    tc = et | nc
    wt = label > 0
    assert et.sum() > 0 and nc.sum() > 0 and (label == EDEMA).sum() > 0, "every sub-region is present"
    assert np.all(tc <= wt), "tumour core inside whole tumour"
    assert np.all(wt <= brain), "whole tumour inside the brain"
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    # the necrotic core is enclosed by enhancing tumour: it touches no edema or healthy tissue
    # except where it meets the brain edge
    from scipy import ndimage

    shell = ndimage.binary_dilation(nc) & ~nc
    assert (et[shell]).mean() > 0.6


def test_tumour_size_is_plausible(study):
    ml = (study.label > 0).sum() * 8 / 1000  # 2 mm voxels
    assert 5 < ml < 250, f"whole tumour {ml:.0f} mL"


def test_same_seed_gives_same_study():
    a, b = generate_study(4, 9, spacing_mm=2.0), generate_study(4, 9, spacing_mm=2.0)
    assert np.array_equal(a.label, b.label)
    for m in a.images:
        assert np.array_equal(a.images[m], b.images[m])
    c = generate_study(4, 10, spacing_mm=2.0)
    assert not np.array_equal(a.label, c.label), "another case index gives another study"


def _mean(study, modality, mask):
    return float(study.images[modality][mask].mean())


def test_each_modality_shows_its_contrast(study):
    anatomy = load_anatomy(2.0)
    label = study.label
    healthy_wm = (anatomy.wm > 0.9) & (label == 0)
    edema, enhancing, core = label == EDEMA, label == ENHANCING, label == NECROTIC_CORE
    # edema bright on FLAIR and T2
    assert _mean(study, "flair", edema) > 1.5 * _mean(study, "flair", healthy_wm)
    assert _mean(study, "t2", edema) > 1.5 * _mean(study, "t2", healthy_wm)
    # enhancing rim bright on T1c, not on T1
    assert _mean(study, "t1c", enhancing) > 1.3 * _mean(study, "t1c", healthy_wm)
    assert _mean(study, "t1c", enhancing) > 1.8 * _mean(study, "t1", enhancing)
    # necrotic core dark on T1
    assert _mean(study, "t1", core) < 0.6 * _mean(study, "t1", healthy_wm)
    # skull-stripped: nothing outside the brain
    assert all(not img[~anatomy.brain].any() for img in study.images.values())


def test_brats2023_layout_and_montage(tmp_path):
    out = make_studies(tmp_path / "s", cases=2, labelled=1, seed=1, montage=tmp_path / "png", ground_truth=tmp_path / "gt")
    case = out / "BraTS-GLI-00000-000"
    assert sorted(p.name for p in case.iterdir()) == sorted(f"BraTS-GLI-00000-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg"))
    assert not (out / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz").exists(), "unlabelled case carries no label"
    assert (tmp_path / "gt" / "BraTS-GLI-00001-000-seg.nii.gz").exists(), "its ground truth goes to --ground-truth"
    png = tmp_path / "png" / "BraTS-GLI-00000-000.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = nib.load(str(case / "BraTS-GLI-00000-000-t1c.nii.gz"))
    assert image.shape == (120, 120, 78) and np.allclose(np.diag(image.affine)[:3], 2.0)


def test_brats2021_layout_stores_enhancing_as_4(tmp_path):
    out = make_studies(tmp_path / "s", cases=1, labelled=1, seed=1, layout="brats2021")
    seg = np.asarray(nib.load(str(out / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz")).dataobj)
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    assert (out / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz").exists()


def test_msd_layout_is_4d_in_decathlon_order(tmp_path):
    out = make_studies(tmp_path / "s", cases=2, labelled=1, seed=1, layout="msd")
    description = json.loads((out / "dataset.json").read_text())
    assert description["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    image = nib.load(str(out / "imagesTr" / "BRATS_000.nii.gz"))
    assert image.shape == (120, 120, 78, 4)
    assert (out / "imagesTs" / "BRATS_001.nii.gz").exists()
    study = generate_study(1, 0, spacing_mm=2.0)
    data = np.asarray(image.dataobj)
    assert np.array_equal(data[..., 0], study.images["flair"]) and np.array_equal(data[..., 2], study.images["t1c"])
    msd = np.asarray(nib.load(str(out / "labelsTr" / "BRATS_000.nii.gz")).dataobj)
    assert np.array_equal(msd == 1, study.label == EDEMA) and np.array_equal(msd == 2, study.label == NECROTIC_CORE)


def test_montage_without_label(tmp_path):
    study = generate_study(2, 0, spacing_mm=2.0)
    path = save_montage(study.images, None, tmp_path / "m.png")
    assert path.stat().st_size > 10_000
