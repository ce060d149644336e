"""The follow-up model through the real server: a patient's earlier final label carried onto the follow-up where the
images did not change, the model's answer where they did; a study with nothing earlier gets the model's answer and
is told why; the audit says which earlier study a pre-label came from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient

from lib.config import BRATS_2023, FOLLOW_UP_MODEL_NAME, PROFILES, FollowUpSettings
from lib.followup.prior_label import PriorStudy, carry_prior, merge_with_prior
from lib.model.brats_metrics import brats_scores
from lib.model.network import build_network
from lib.studies.case_cache import stack_study_files
from lib.studies.folder_layout import find_studies
from synthetic.follow_up import follow_up_name
from tests.conftest import make_studies

pytestmark = pytest.mark.server

BASELINE, FOLLOW_UP = follow_up_name(0, 0), follow_up_name(0, 1)
SECOND_PATIENT_BASELINE = follow_up_name(1, 0)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Two patients at 2 mm, each a labelled baseline and an unlabelled follow-up (its truth kept aside)."""
    folder = tmp_path_factory.mktemp("follow_up")
    make_studies(folder / "studies", cases=2, labelled=2, seed=61, follow_ups=1, ground_truth=folder / "truth")
    return folder / "studies"


@pytest.fixture(scope="module")
def blind_weights(tmp_path_factory) -> Path:
    """A network that sees no tumour anywhere (its last layer says background): whatever the follow-up answer
    holds of the tumour came from the earlier label."""
    network = build_network(PROFILES["cpu"])
    state = network.state_dict()
    state["conv_final.2.conv.weight"].zero_()
    state["conv_final.2.conv.bias"].fill_(-10.0)
    path = tmp_path_factory.mktemp("weights") / "blind.pt"
    torch.save(state, path)
    return path


def _truth(studies: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(str(studies.parent / "truth" / f"{case}-seg.nii.gz")).dataobj, dtype=np.uint8)


def _source(studies: Path, case: str):
    return next(source for source in find_studies(studies)[0] if source.study_id == case)


def _stacked(studies: Path, folder: Path, case: str) -> Path:
    """The study's model input, as the server stacks it."""
    data, affine, _ = stack_study_files(_source(studies, case))
    nib.save(nib.Nifti1Image(data, affine), str(folder / f"{case}.nii.gz"))
    return folder / f"{case}.nii.gz"


def answer_input(studies: Path, folder: Path, case: str) -> nib.Nifti1Image:
    return nib.load(str(_stacked(studies, folder, case)))


def prior_of(studies: Path, folder: Path) -> PriorStudy:
    return PriorStudy(BASELINE, "2024-01-08", _stacked(studies, folder, BASELINE), Path(_source(studies, BASELINE).ground_truth), "")


def test_the_rule_keeps_the_earlier_label_where_nothing_changed_and_the_model_where_something_did(studies, tmp_path):
    """On the generator's follow-up (tumour resized, head moved 3 degrees and 3 mm, images acquired anew), without
    the server: the carried label alone, and merged with a model that sees nothing."""
    current, prior = answer_input(studies, tmp_path, FOLLOW_UP), prior_of(studies, tmp_path)
    carried, changed, reach, record = carry_prior(current, prior, FollowUpSettings())
    truth = _truth(studies, FOLLOW_UP)
    spacing = (2.0, 2.0, 2.0)
    unregistered = np.asarray(nib.load(str(prior.label_path)).dataobj, dtype=np.uint8)
    assert record["registration"]["rotation_deg"] > 0.5 and record["registration"]["overlap"] > 0.95
    assert brats_scores(carried, truth, spacing, BRATS_2023)["wt"]["dice"] > brats_scores(unregistered, truth, spacing, BRATS_2023)["wt"]["dice"], "registration helps"
    tumour_changed = changed & ((truth > 0) ^ (carried > 0))
    assert tumour_changed.sum() > 0.5 * ((truth > 0) ^ (carried > 0)).sum(), "most of what the tumour's change moved is found changed"
    assert changed.mean() < 0.1, "the rest of the brain is not"
    tumour = (truth > 0) | (carried > 0)
    right_where_kept = (carried == truth)[~changed & reach & tumour].mean()
    right_where_changed = (carried == truth)[changed & tumour].mean()
    assert right_where_kept > 0.75 and right_where_kept > right_where_changed + 0.4, "the change map tells where the earlier label is wrong"
    assert np.array_equal(merge_with_prior(truth, carried, changed, reach), np.where(changed | ~reach, truth, carried))


def test_the_follow_up_model_answers_with_the_earlier_label_and_the_audit_says_which(studies, blind_weights, server_factory, tmp_path):
    server = server_factory(studies, pretrained_weights=blind_weights)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="pytest")
    model = client.info()["models"][FOLLOW_UP_MODEL_NAME]
    assert model["type"] == "segmentation" and model["labels"] == {"necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}

    plain_file, _ = client.infer("segmentation", FOLLOW_UP, {})
    assert not np.asarray(nib.load(plain_file).dataobj).any(), "the blind model sees nothing"
    label_file, result = client.infer(FOLLOW_UP_MODEL_NAME, FOLLOW_UP, {})
    result = json.loads(result) if isinstance(result, str) else result
    record = result["follow_up"]
    assert record["prior_case"] == BASELINE and record["prior_acquired"] == "2024-01-08"
    assert record["tumour_from_earlier_label_ml"] > 5 and record["registration"]["overlap"] > 0.95
    answer = nib.load(label_file)
    truth_image = nib.load(str(studies.parent / "truth" / f"{FOLLOW_UP}-seg.nii.gz"))
    assert answer.shape == truth_image.shape and np.allclose(answer.affine, truth_image.affine, atol=1e-4)
    scores = brats_scores(np.asarray(answer.dataobj, dtype=np.uint8), _truth(studies, FOLLOW_UP), (2.0, 2.0, 2.0), BRATS_2023)
    assert scores["wt"]["dice"] > 0.15, f"the model alone scores 0: {scores}"
    carried, changed, reach, _ = carry_prior(answer_input(studies, tmp_path, FOLLOW_UP), prior_of(studies, tmp_path), FollowUpSettings())
    expected = merge_with_prior(np.zeros_like(carried), carried, changed, reach)
    assert brats_scores(np.asarray(answer.dataobj, dtype=np.uint8), expected, (2.0, 2.0, 2.0), BRATS_2023)["wt"]["dice"] > 0.99, "the rule, as written down"
    assert result["volumes_ml"]["WT"] > 5, "volumes are the answer's"

    _, alone = client.infer(FOLLOW_UP_MODEL_NAME, SECOND_PATIENT_BASELINE, {})
    alone = json.loads(alone) if isinstance(alone, str) else alone
    assert alone["follow_up"]["prior_case"] is None and "none of this patient's 0 earlier studies" in alone["follow_up"]["answer"]

    corrected = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(answer.dataobj, dtype=np.uint8), answer.affine), str(corrected))
    client.save_label(FOLLOW_UP, str(corrected), tag="final", params={"user": "dr_follow"})
    audit = requests.get(f"{server.url}/brats/audit", timeout=30).json()
    saved = [row for row in audit if row["case"] == FOLLOW_UP and row["tag"] == "final"][-1]
    assert saved["prelabel_model"] == FOLLOW_UP_MODEL_NAME and saved["prelabel_prior_case"] == BASELINE
    assert saved["dice_wt"] == 1.0, "saved as pre-labelled: the correction changed nothing"
    timeline = requests.get(f"{server.url}/brats/timeline/{FOLLOW_UP}", timeout=30).json()["studies"]
    assert [row["case"] for row in timeline] == [BASELINE, FOLLOW_UP] and [row["volumes_from"] for row in timeline] == ["final label"] * 2


def test_an_earlier_study_that_cannot_be_opened_leaves_the_follow_up_to_the_model(studies, tmp_path):
    import shutil

    from lib.followup.prior_label import earlier_final_label
    from lib.studies.folder_datastore import StudyFolderDatastore

    broken = tmp_path / "studies"
    shutil.copytree(studies, broken, ignore=shutil.ignore_patterns(".brats_label"))
    t1 = broken / BASELINE / f"{BASELINE}-t1n.nii.gz"
    image = nib.load(str(t1))
    nib.save(nib.Nifti1Image(np.full(image.shape, np.nan, np.float32), image.affine), str(t1))  # NaN voxels: unusable
    datastore = StudyFolderDatastore(broken, tmp_path / "workspace")
    prior, why = earlier_final_label(datastore, FOLLOW_UP)
    assert prior is None and BASELINE in why and "cannot be opened" in why, why


def test_a_deformable_stage_carries_the_earlier_label_onto_a_brain_that_settled(tmp_path):
    """The same tumour scanned again with the brain settled 5 mm towards the lesion (as after surgery): the rigid stage
    alone leaves the label off by the shift; the deformable stage follows it, and its record says how far it moved the
    brain."""
    from synthetic.brain_shift import shift_towards_lesion
    from synthetic.follow_up import generate_follow_up
    from synthetic.layouts import write_study

    folder = tmp_path / "studies"
    baseline = generate_follow_up(62, 0, 0, spacing_mm=2.0)
    settled = shift_towards_lesion(dataclasses.replace(baseline, case_id=FOLLOW_UP), 5.0)
    write_study(baseline, folder, "brats2023", True)
    write_study(settled, folder, "brats2023", False, tmp_path / "truth")
    current = answer_input(folder, tmp_path, FOLLOW_UP)
    prior = PriorStudy(BASELINE, "2024-01-08", _stacked(folder, tmp_path, BASELINE), Path(_source(folder, BASELINE).ground_truth), "")
    truth = _truth(folder, FOLLOW_UP)
    rigid, *_ = carry_prior(current, prior, dataclasses.replace(FollowUpSettings(), deformable=False))
    deformed, _, _, record = carry_prior(current, prior, FollowUpSettings())  # the default: deformable
    dice = {name: brats_scores(label, truth, (2.0, 2.0, 2.0), BRATS_2023)["wt"]["dice"] for name, label in (("rigid", rigid), ("deformable", deformed))}
    assert dice["deformable"] > dice["rigid"] + 0.1 and dice["deformable"] > 0.8, dice
    assert "demons" in record["registration"]["method"] and 3.0 < record["registration"]["largest_deformation_mm"] < 8.0, record
