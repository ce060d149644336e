"""Weights: the bundle-compatible network loads bundle-shaped weights; anything else gets a clear error.
Transforms: predictions come back on the study's own grid with the right labels and volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, Spacing

from lib.config import BRATS_2023, PROFILES, REGIONS
from lib.errors import ModelNotReady
from lib.model.network import build_network, check_weights, load_network, read_state_dict
from lib.model.transforms import KeepWithinInputd, RegionsToLabeld, RegionVolumesd, RestoreToSourceGridd, region_volumes_ml
from tests.conftest import LOOP_PATCH


def test_bundle_profile_matches_model_zoo_architecture():
    network = build_network(PROFILES["bundle"])
    assert sum(p.numel() for p in network.parameters()) == 4_702_227  # model-zoo brats_mri_segmentation SegResNet
    assert network.convInit.conv.weight.shape == (16, 4, 3, 3, 3)
    assert network.conv_final[-1].conv.weight.shape[0] == len(REGIONS)


@pytest.mark.parametrize("layout", ["bare", "checkpoint"])
def test_bundle_weights_load_as_bare_state_dict_or_checkpoint(tmp_path, layout):
    state = build_network(PROFILES["bundle"]).state_dict()
    path = tmp_path / "model.pt"
    torch.save(state if layout == "bare" else {"model": state}, path)
    network = load_network(PROFILES["bundle"], path, torch.device("cpu"))
    assert torch.equal(network.state_dict()["convInit.conv.weight"], state["convInit.conv.weight"])


def test_weights_of_the_other_profile_name_the_profile_to_use(tmp_path):
    path = tmp_path / "cpu.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), path)
    with pytest.raises(ModelNotReady, match="looks like the 'cpu' profile: start the server with --conf profile cpu") as error:
        check_weights(read_state_dict(path), PROFILES["bundle"], path)
    assert error.value.status_code == 409
    assert "(8, 4, 3, 3, 3)" in str(error.value) and "(16, 4, 3, 3, 3)" in str(error.value)


def test_foreign_weights_and_junk_files_get_clear_errors(tmp_path):
    from monai.networks.nets import UNet

    foreign = tmp_path / "unet.pt"
    torch.save(UNet(3, 4, 3, (8, 16), (2,)).state_dict(), foreign)
    with pytest.raises(ModelNotReady, match="layers missing .*brats_mri_segmentation"):
        check_weights(read_state_dict(foreign), PROFILES["cpu"], foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    with pytest.raises(ModelNotReady, match="not a PyTorch weights file"):
        read_state_dict(junk)


def test_regions_to_label_follows_brats_nesting():
    tc = torch.tensor([1, 1, 0, 0, 0, 1], dtype=torch.float32)
    wt = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.float32)
    et = torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float32)
    regions = torch.stack([tc, wt, et])[:, :, None, None]  # (3, 6, 1, 1), order TC, WT, ET
    label = RegionsToLabeld(keys="pred", label_set=BRATS_2023)({"pred": regions})["pred"]
    assert label.shape == (1, 6, 1, 1)
    assert label.flatten().tolist() == [3, 1, 2, 0, 3, 1]


def test_region_volumes_are_counts_times_voxel_volume():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[:2] = 1
    label[2:5] = 2
    label[5:6] = 3
    volumes = region_volumes_ml(label, voxel_volume_ml=0.008, label_set=BRATS_2023)
    assert volumes == {"necrotic_core": 1.6, "edema": 2.4, "enhancing_tumour": 0.8, "TC": 2.4, "WT": 4.8}
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    result = RegionVolumesd(keys="pred", label_set=BRATS_2023)({"pred": MetaTensor(torch.as_tensor(label), affine=affine)})
    assert result["result"]["volumes_ml"] == volumes


def _study_grid():
    """An oblique, LPS-oriented 1.2 x 0.9 x 3 mm grid: nothing about it is RAS or isotropic."""
    angle = np.deg2rad(12)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rotation @ np.diag([1.2, 0.9, 3.0])
    affine[:3, 3] = [80.0, 90.0, -40.0]
    return affine, (110, 130, 40)


def test_restore_to_source_grid_matches_full_inverse_resampling():
    """The bounding-box shortcut gives the labels a full resampling onto the study grid gives."""
    affine, shape = _study_grid()
    image = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine), meta={"original_affine": affine, "spatial_shape": np.array(shape)})
    low = Spacing(pixdim=(2.0, 2.0, 2.0))(Orientation(axcodes="RAS")(image))
    probabilities = torch.zeros((3, *low.shape[1:]))
    centre = np.array(low.shape[1:]) // 2
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in low.shape[1:]], indexing="ij"))
    distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    for channel, radius in enumerate((6.0, 9.0, 4.0)):
        probabilities[channel] = torch.as_tensor(np.clip(1.2 - distance / radius, 0, 1))
    prediction = MetaTensor(probabilities, affine=low.affine)

    restored = RestoreToSourceGridd(keys="pred")({"pred": prediction, "image": image})["pred"]
    assert tuple(restored.shape[1:]) == shape
    assert np.allclose(restored.affine.numpy(), affine)

    from monai.transforms import SpatialResample

    full = SpatialResample(mode="bilinear", padding_mode="zeros")(prediction, dst_affine=torch.as_tensor(affine), spatial_size=shape)
    shortcut, reference = restored.numpy() > 0.5, full.numpy() > 0.5
    assert reference.sum() > 1000
    assert (shortcut != reference).sum() <= 0.002 * reference.sum()


def test_labels_and_volumes_of_a_restored_answer_are_those_of_the_whole_grid():
    """A restored answer is painted and counted on the box it can be non-zero in (a tenth of a second per answer at
    1 mm); the label and the volumes are the ones the whole grid gives."""
    affine, shape = _study_grid()
    image = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine), meta={"original_affine": affine, "spatial_shape": np.array(shape)})
    low = Spacing(pixdim=(2.0, 2.0, 2.0))(Orientation(axcodes="RAS")(image))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in low.shape[1:]], indexing="ij"))
    distance = np.sqrt(((grid - (np.array(low.shape[1:]) // 3)[:, None, None, None]) ** 2).sum(0))
    probabilities = torch.stack([torch.as_tensor(np.clip(1.2 - distance / radius, 0, 1), dtype=torch.float32) for radius in (6.0, 9.0, 4.0)])
    restored = RestoreToSourceGridd(keys="pred")({"pred": MetaTensor(probabilities, affine=low.affine), "image": image})["pred"]
    whole_grid = MetaTensor(restored.as_tensor().clone(), affine=restored.affine)  # no box: painted and counted everywhere

    steps = [RegionsToLabeld(keys="pred", label_set=BRATS_2023), RegionVolumesd(keys="pred", label_set=BRATS_2023)]
    boxed, reference = {"pred": restored}, {"pred": whole_grid}
    for step in steps:
        boxed, reference = step(boxed), step(reference)
    assert torch.equal(boxed["pred"].as_tensor(), reference["pred"].as_tensor()) and int((reference["pred"] == 3).sum()) > 100
    assert boxed["result"]["volumes_ml"] == reference["result"]["volumes_ml"] and reference["result"]["volumes_ml"]["WT"] > 1.0


def test_an_answer_asked_on_the_series_clicked_on_lies_on_that_series_grid_where_the_tumour_is():
    """OHIF reads a refinement's answer in the indices of the series on screen: a sagittal series here, each of
    whose axes runs along another world axis than the study's. The tumour's centre lands at the sagittal voxel
    of the same world point."""
    affine, shape = _study_grid()
    image = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine), meta={"original_affine": affine, "spatial_shape": np.array(shape)})
    low = Spacing(pixdim=(2.0, 2.0, 2.0))(Orientation(axcodes="RAS")(image))
    centre = np.array(low.shape[1:]) // 2
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in low.shape[1:]], indexing="ij"))
    ball = torch.as_tensor((np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) <= 5).astype(np.float32))
    prediction = MetaTensor(torch.stack([ball, ball, ball]), affine=low.affine)
    world_centre = (low.affine.numpy() @ np.append(centre, 1.0))[:3]
    sagittal = np.eye(4)  # i front to back, j head to feet, k right to left; 1 x 1 x 1.5 mm
    sagittal[:3, :3] = np.array([[0, 0, -1.5], [-1.0, 0, 0], [0, -1.0, 0]])
    sagittal[:3, 3] = world_centre + np.array([30.0, 60.0, 70.0])
    sagittal_shape = (150, 160, 50)

    restored = RestoreToSourceGridd(keys="pred")({"pred": prediction, "image": image, "answer_grid": {"affine": sagittal.tolist(), "shape": list(sagittal_shape)}})["pred"]
    assert tuple(restored.shape[1:]) == sagittal_shape and np.allclose(restored.affine.numpy(), sagittal)
    inside = np.argwhere(restored[1].numpy() > 0.5)
    expected = (np.linalg.inv(sagittal) @ np.append(world_centre, 1.0))[:3]
    assert len(inside) > 100 and np.abs(inside.mean(0) - expected).max() <= 1.0, (inside.mean(0), expected)


def test_restore_with_empty_prediction_is_all_background():
    affine, shape = _study_grid()
    image = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine), meta={"original_affine": affine, "spatial_shape": np.array(shape)})
    prediction = MetaTensor(torch.zeros((3, 40, 40, 40)), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    restored = RestoreToSourceGridd(keys="pred")({"pred": prediction, "image": image})["pred"]
    assert tuple(restored.shape) == (3, *shape) and not restored.any()


def test_no_region_is_kept_where_the_model_saw_no_brain_nor_in_the_csf_at_its_edge():
    """A prepared study is zero outside its extracted brain. The network's calls there, and a thin sheet of 'edema'
    along the brain's edge (the CSF that thick slices blur into it), are dropped; a tumour inside the brain that
    reaches its surface is kept whole, and so is every channel of it."""
    grid = np.stack(np.meshgrid(*[np.arange(50)] * 3, indexing="ij")).astype(float)
    radius = np.linalg.norm(grid - 25, axis=0)
    brain = radius <= 20
    image = MetaTensor(torch.zeros((4, 50, 50, 50)), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))  # 2 mm
    image[:, brain] = 1.0 + torch.rand((4, int(brain.sum())))
    tumour = np.linalg.norm(grid - np.array([25, 25, 41])[:, None, None, None], axis=0) <= 6  # reaches the surface
    sheet = brain & (radius >= 18.5) & (grid[2] < 15)  # 3 mm thick, on the brain's underside
    outside = ~brain & (grid[0] < 3)
    pred = torch.zeros((3, 50, 50, 50))
    pred[:, torch.as_tensor(tumour | sheet | outside)] = 0.9
    kept = KeepWithinInputd(keys="pred", ref_key="image")({"image": image, "pred": pred})["pred"].numpy()
    assert (kept[:, tumour & brain] == np.float32(0.9)).all(), "the tumour is kept whole within the brain, every region"
    assert not kept[:, ~brain].any(), "nothing outside the brain the model saw"
    assert not kept[:, sheet].any(), "the sheet of CSF along the edge is dropped"

    # a refinement model's input: the same study and, after it, a background click drawn outside the brain
    guidance = torch.zeros((4, 50, 50, 50))
    guidance[0, torch.as_tensor(outside)] = 1.0
    guided = MetaTensor(torch.cat([image.as_tensor(), guidance]), affine=image.affine)
    kept = KeepWithinInputd(keys="pred", ref_key="image")({"image": guided, "pred": pred})["pred"].numpy()
    assert not kept[:, ~brain].any(), "a click is not brain: nothing is kept where it was drawn outside"


def test_network_trained_from_scratch_starts_at_the_foreground_prior():
    from lib.model.network import set_foreground_prior

    network = set_foreground_prior(build_network(PROFILES["cpu"]), 0.02).eval()
    with torch.no_grad():
        output = torch.sigmoid(network(torch.zeros((1, 4, 32, 32, 32))))
    assert output.mean().item() == pytest.approx(0.02, abs=0.01)


def test_fine_tuning_from_existing_weights_uses_the_lower_learning_rate(tmp_path):
    from types import SimpleNamespace

    from lib.config import TrainSettings
    from lib.trainers.segmentation import BratsSegmentationTrainer

    settings = TrainSettings()
    start = tmp_path / "start.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), start)
    for load_path, expected in ((None, settings.learning_rate), (start, settings.fine_tune_learning_rate)):
        trainer = BratsSegmentationTrainer(tmp_path / "m", PROFILES["cpu"], settings, tmp_path / "p.pt", load_path=load_path)
        context = SimpleNamespace(output_dir=str(tmp_path / "m" / "train_01"), pretrained=True, request=trainer.config(), network=build_network(PROFILES["cpu"]))
        assert trainer.optimizer(context).param_groups[0]["lr"] == expected
    assert settings.fine_tune_learning_rate < settings.learning_rate / 3


def test_early_stopping_is_honoured_when_asked(studies_copy, tmp_path):
    """early_stop_patience 1 with a model that cannot improve (learning rate 0): the second validation ends it."""
    from lib.config import TrainSettings
    from lib.studies.folder_datastore import StudyFolderDatastore
    from lib.trainers.segmentation import BratsSegmentationTrainer

    datastore = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    trainer = BratsSegmentationTrainer(tmp_path / "model", PROFILES["cpu"], TrainSettings(max_epochs=4), publish_path=tmp_path / "model.pt")
    assert trainer.config()["early_stop_patience"] == 0, "off unless asked"
    request = {"device": "cpu", "max_epochs": 4, "learning_rate": 0.0, "early_stop_patience": 1, "samples_per_case": 1, "patch_size": LOOP_PATCH}
    assert trainer(request, datastore)["epoch"] == 2


def test_a_first_model_trains_its_own_number_of_epochs_and_a_fine_tune_its_own(studies_copy, tmp_path):
    """From no weights a run needs many more steps than a fine-tune from weights: each kind has its epochs, and a
    request naming only ``max_epochs`` gets exactly that."""
    from lib.config import TrainSettings
    from lib.studies.folder_datastore import StudyFolderDatastore
    from lib.trainers.segmentation import BratsSegmentationTrainer

    datastore = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    settings = TrainSettings(max_epochs=1, max_epochs_from_scratch=2)
    quick = {"device": "cpu", "samples_per_case": 1, "val_split": 0.0, "seed": 1, "patch_size": LOOP_PATCH}
    first = BratsSegmentationTrainer(tmp_path / "first", PROFILES["cpu"], settings, publish_path=tmp_path / "first.pt")
    assert first.config()["max_epochs_from_scratch"] == 2, "shown to clients (Slicer sends the config it shows)"
    assert first(quick, datastore)["epoch"] == 2
    named = BratsSegmentationTrainer(tmp_path / "named", PROFILES["cpu"], settings, publish_path=tmp_path / "named.pt")
    assert named({**quick, "max_epochs": 3}, datastore)["epoch"] == 3
    fine_tune = BratsSegmentationTrainer(tmp_path / "tune", PROFILES["cpu"], settings, publish_path=tmp_path / "tune.pt", load_path=tmp_path / "first.pt")
    assert fine_tune(quick, datastore)["epoch"] == 1


def test_conf_max_epochs_sets_every_run_unless_the_first_models_epochs_are_named():
    from lib.config import AppConfig, ConfigError, TrainSettings

    assert AppConfig.from_conf({}).train.max_epochs_from_scratch == TrainSettings.max_epochs_from_scratch
    one_number = AppConfig.from_conf({"max_epochs": "3"}).train
    assert (one_number.max_epochs, one_number.max_epochs_from_scratch) == (3, 3)
    both = AppConfig.from_conf({"max_epochs": "3", "max_epochs_from_scratch": "50"}).train
    assert (both.max_epochs, both.max_epochs_from_scratch) == (3, 50)
    with pytest.raises(ConfigError, match="max_epochs_from_scratch"):
        AppConfig.from_conf({"max_epochs_from_scratch": "0"})


def test_a_seeded_training_repeats_exactly(studies_copy, tmp_path):
    """The same seed gives the same weights (network start, patches, augmentations); another seed does not."""
    from lib.config import TrainSettings
    from lib.studies.folder_datastore import StudyFolderDatastore
    from lib.trainers.segmentation import BratsSegmentationTrainer

    datastore = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    weights = []
    for run, seed in enumerate((7, 7, 8)):
        trainer = BratsSegmentationTrainer(tmp_path / f"model{run}", PROFILES["cpu"], TrainSettings(), publish_path=tmp_path / f"{run}.pt")
        trainer({"device": "cpu", "max_epochs": 1, "samples_per_case": 1, "val_split": 0.0, "seed": seed, "patch_size": LOOP_PATCH}, datastore)
        weights.append(read_state_dict(tmp_path / f"{run}.pt"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_a_run_validates_every_interval_asked_at_most_and_always_its_last_epoch():
    """The best model is chosen among the validated epochs: the interval divides the run's epochs."""
    from lib.trainers.segmentation import validation_interval

    assert validation_interval(20, 2, 1) == 2
    assert validation_interval(20, "5", 1) == 5  # Slicer sends every value as it shows it
    assert validation_interval(7, 5, 1) == 1  # no divisor of 7 up to 5 but 1
    assert validation_interval(1, 5, 1) == 1
    assert validation_interval(20, None, 5) == 5 and validation_interval(20, "", 4) == 4  # not asked: the trainer's own
    assert validation_interval(20, 0, 5) == 1  # asked for none between: every epoch
