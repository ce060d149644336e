"""Active learning: uncertainty that reflects doubt about the tumour, and a fair, safe next-case queue."""

from __future__ import annotations

import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
import torch

from lib.activelearning.handouts import HandOuts
from lib.activelearning.sampling import FLIPS, enable_mc_dropout, stochastic_predictions
from lib.activelearning.scores import ScoreStore, model_version
from lib.activelearning.strategies import PowerUncertaintyStrategy, RandomStrategy, UncertaintyStrategy
from lib.activelearning.uncertainty import binary_entropy, case_uncertainty, voxel_entropy
from lib.config import PROFILES
from lib.model.network import build_network

# --- the measure ------------------------------------------------------------------------------------


def test_entropy_is_of_the_mean_probability_not_of_the_argmax():
    confident = torch.full((4, 3, 2, 2, 2), 0.95)
    disagreeing = torch.stack([torch.full((3, 2, 2, 2), p) for p in (0.9, 0.1, 0.9, 0.1)])
    assert voxel_entropy(disagreeing).mean() > 3 * voxel_entropy(confident).mean()
    assert binary_entropy(torch.tensor(0.5)).item() == pytest.approx(math.log(2), rel=1e-4)


def _samples(shape=(40, 40, 40), tumour_p=0.9, doubt=0.0, tumour=True):
    """Four samples of a case with a 6-voxel-radius tumour; ``doubt`` spreads the samples' probabilities."""
    x, y, z = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    ball = ((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2) < 36
    samples = torch.full((4, 3, *shape), 0.01)
    if tumour:
        for t in range(4):
            p = tumour_p + (doubt if t % 2 else -doubt)
            samples[t][:, ball] = p
    return samples


def test_doubt_about_the_tumour_scores_higher_whatever_the_background():
    clean = case_uncertainty(_samples(doubt=0.0), voxel_ml=0.008)
    doubtful = case_uncertainty(_samples(tumour_p=0.55, doubt=0.4), voxel_ml=0.008)
    # the margin's healthy voxels dilute both alike: by hand (900*0.69 + 3300*0.056) / (900*0.33 + 3300*0.056) = 1.7
    assert doubtful.score > 1.6 * clean.score
    # twice the healthy background changes nothing: the score is over the tumour region
    bigger = case_uncertainty(_samples(shape=(40, 40, 80), doubt=0.0), voxel_ml=0.008)
    assert bigger.score == pytest.approx(clean.score, rel=1e-3)
    assert clean.roi_voxels > 0 and clean.tumour_ml > 0


def test_case_without_visible_tumour_uses_its_most_uncertain_voxels():
    calm = torch.full((4, 3, 30, 30, 30), 0.01)
    faint = calm.clone()
    faint[:, :, 10:14, 10:14, 10:14] = 0.35  # half-seen lesion, below the tumour threshold
    assert case_uncertainty(faint, 0.008).roi_voxels == 0
    # top 250 voxels: (64 * 0.647 + 186 * 0.056) / 250 = 0.21 against 0.056 for the calm case
    assert case_uncertainty(faint, 0.008).score > 3 * case_uncertainty(calm, 0.008).score


def test_mc_dropout_and_flips_give_different_samples_that_undo_the_flip():
    torch.manual_seed(0)
    network = build_network(PROFILES["cpu"])
    enable_mc_dropout(network)
    dropouts = [m for m in network.modules() if isinstance(m, torch.nn.Dropout3d)]
    assert dropouts and all(m.training for m in dropouts)
    assert not any(m.training for m in network.modules() if isinstance(m, torch.nn.GroupNorm))
    image = torch.randn(1, 4, 32, 32, 32)
    samples = stochastic_predictions(image, network, lambda x, n: n(x), samples=4)
    assert samples.shape == (4, 3, 32, 32, 32) and not torch.allclose(samples[0], samples[1])
    assert len(FLIPS) == 8
    # without dropout, a flipped pass flipped back is the same prediction up to the network's asymmetry
    plain = stochastic_predictions(image, network, lambda x, n: n(x), samples=2, mc_dropout=False, flips=False)
    assert torch.allclose(plain[0], plain[1])


def test_model_version_is_a_content_hash(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")
    assert model_version(str(a)) == model_version(str(b)) is not None
    b.write_bytes(b"weights-2")
    assert model_version(str(a)) != model_version(str(b))
    assert model_version(None) is None and model_version(str(tmp_path / "missing.pt")) is None


# --- the queue ------------------------------------------------------------------------------------


class FakeDatastore:
    def __init__(self, unlabelled, labelled=()):
        self.unlabelled, self.labelled = list(unlabelled), list(labelled)

    def get_unlabeled_images(self, *args):
        return list(self.unlabelled)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def queue(tmp_path):
    clock = Clock()
    store = ScoreStore(tmp_path / "scores")
    handouts = HandOuts(tmp_path / "handouts.json", ttl_s=60, clock=clock)
    version = {"served": "v1"}
    strategy = UncertaintyStrategy(store, lambda: version["served"], handouts, rng=random.Random(0))
    return strategy, store, handouts, clock, version


def test_most_uncertain_case_first_and_labelled_never(queue):
    strategy, store, _, _, _ = queue
    for case, score in {"a": 0.1, "b": 0.5, "c": 0.3, "labelled": 0.9}.items():
        store.save(case, "v1", {"score": score})
    datastore = FakeDatastore(["a", "b", "c"], labelled=["labelled"])
    answer = strategy({"client_id": "ann1"}, datastore)
    assert answer["id"] == "b" and answer["picked_by"] == "uncertainty" and answer["model_version"] == "v1"
    assert [strategy({"client_id": c}, datastore)["id"] for c in ("ann2", "ann3")] == ["c", "a"]
    assert strategy({"client_id": "ann4"}, datastore) is None, "all unlabelled cases handed out; the labelled one never is"


def test_power_strategy_draws_by_uncertainty_from_unlabelled_scored_cases_only(queue, tmp_path):
    _, store, handouts, clock, version = queue
    power = PowerUncertaintyStrategy(store, lambda: version["served"], handouts, beta=1.0, rng=random.Random(1))
    for case, score in {"a": 0.1, "b": 0.6, "c": 0.3, "labelled": 5.0}.items():
        store.save(case, "v1", {"score": score})
    datastore = FakeDatastore(["a", "b", "c"], labelled=["labelled"])
    picks = []
    for i in range(300):
        answer = power({"client_id": f"ann{i}"}, datastore)
        picks.append(answer["id"])
        clock.now += 61  # the hand-out expires: every case is on offer again
        assert answer["picked_by"] == "power" and answer["model_version"] == "v1"
    counts = {case: picks.count(case) for case in "abc"}
    assert set(picks) <= {"a", "b", "c"} and counts["b"] > counts["c"] > counts["a"] > 0, counts


def test_two_annotators_at_once_get_different_cases(queue):
    strategy, store, _, _, _ = queue
    for case, score in {"a": 0.1, "b": 0.5, "c": 0.3}.items():
        store.save(case, "v1", {"score": score})
    datastore = FakeDatastore(["a", "b", "c"])
    barrier = threading.Barrier(2)

    def ask(client):
        barrier.wait()
        return strategy({"client_id": client}, datastore)["id"]

    with ThreadPoolExecutor(2) as pool:
        picks = list(pool.map(ask, ["ann1", "ann2"]))
    assert sorted(picks) == ["b", "c"]


def test_hand_out_expires_and_the_case_is_offered_again(queue):
    strategy, store, handouts, clock, _ = queue
    store.save("only", "v1", {"score": 0.4})
    datastore = FakeDatastore(["only"])
    assert strategy({"client_id": "ann1"}, datastore)["id"] == "only"
    assert strategy({"client_id": "ann2"}, datastore) is None, "held by ann1"
    assert strategy({"client_id": "ann1"}, datastore)["id"] == "only", "the holder may ask again"
    clock.now += 61
    assert strategy({"client_id": "ann2"}, datastore)["id"] == "only"
    assert handouts.holder("only") == "ann2"


def test_scores_of_a_previous_model_are_not_used(queue):
    strategy, store, _, _, version = queue
    store.save("a", "v1", {"score": 0.9})
    store.save("b", "v2", {"score": 0.1})
    datastore = FakeDatastore(["a", "b"])
    version["served"] = "v2"
    answer = strategy({"client_id": "ann1"}, datastore)
    assert answer["id"] == "b" and answer["unscored"] == 1
    version["served"] = "v3"
    answer = strategy({"client_id": "ann2"}, datastore)
    assert answer["picked_by"] == "random" and "no uncertainty scores for model v3" in answer["reason"]


def test_without_a_model_the_pick_is_random_and_says_so(queue, tmp_path):
    strategy, _, _, _, version = queue
    version["served"] = None
    answer = strategy({}, FakeDatastore(["a", "b"]))
    assert answer["picked_by"] == "random" and answer["reason"] == "random pick: no model yet"
    assert answer["client_id"] == "anonymous"
    random_strategy = RandomStrategy(HandOuts(tmp_path / "h2.json", 60), rng=random.Random(1))
    picks = {random_strategy({"client_id": f"c{i}"}, FakeDatastore(["a", "b", "c"]))["id"] for i in range(3)}
    assert picks == {"a", "b", "c"}, "three clients at once get three different cases"


# --- background scoring ------------------------------------------------------------------------------


def test_scoring_resumes_after_restart_and_redoes_everything_for_a_new_model(studies_copy, tmp_path):
    from lib.activelearning.scoring import EpistemicScoring
    from lib.config import ScoringSettings
    from lib.studies.folder_datastore import StudyFolderDatastore

    datastore = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    unlabelled = datastore.get_unlabeled_images()
    assert len(unlabelled) == 2
    weights = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    version = model_version(str(weights))
    store = ScoreStore(tmp_path / "scores")
    store.save(unlabelled[0], version, {"score": 0.123})  # scored before the "restart"

    scoring = EpistemicScoring(PROFILES["cpu"], lambda: str(weights), store, ScoringSettings(samples=2))
    assert scoring({}, datastore) == {"scored": 1, "failed": {}, "model_version": version, "seconds": pytest.approx(0, abs=120)}
    assert store.current(unlabelled[0], version)["score"] == 0.123, "a current score is not redone"
    fresh = store.current(unlabelled[1], version)
    assert 0.0 <= fresh["score"] <= math.log(2) and fresh["samples"] == 2
    assert store.progress()["done"] == store.progress()["total"] == 1

    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)  # another model is served
    assert scoring({}, datastore)["scored"] == 2
    assert all(store.current(case, model_version(str(weights))) for case in unlabelled)


def test_a_study_that_cannot_be_opened_is_skipped_and_the_others_are_scored(studies_copy, tmp_path):
    from lib.activelearning.queue import annotation_queue
    from lib.activelearning.scoring import EpistemicScoring
    from lib.config import ScoringSettings
    from lib.studies.folder_datastore import StudyFolderDatastore

    datastore = StudyFolderDatastore(studies_copy, tmp_path / "ws")
    broken, good = datastore.get_unlabeled_images()
    path = next((studies_copy / broken).glob("*-flair.nii.gz")) if list((studies_copy / broken).glob("*-flair.nii.gz")) else next((studies_copy / broken).glob("*-t2f.nii.gz"))
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), str(path))
    weights = tmp_path / "model.pt"
    torch.save(build_network(PROFILES["cpu"]).state_dict(), weights)
    store = ScoreStore(tmp_path / "scores")
    scoring = EpistemicScoring(PROFILES["cpu"], lambda: str(weights), store, ScoringSettings(samples=2))

    answer = scoring({}, datastore)
    assert answer["scored"] == 1 and list(answer["failed"]) == [broken] and "NaN" in answer["failed"][broken]
    version = model_version(str(weights))
    assert store.current(good, version)["score"] >= 0.0 and store.current(broken, version) is None
    assert store.progress()["done"] == 2 and store.progress()["failed"] == 1
    queue = annotation_queue(store, version, [broken, good])
    assert [e["id"] for e in queue] == [good, broken] and queue[0]["rank"] == 1 and "NaN" in queue[1]["not_scored"]
    assert scoring({}, datastore)["scored"] == 0, "not retried until the model changes"


def test_scoring_without_a_model_does_nothing(tmp_path, studies_copy):
    from lib.activelearning.scoring import EpistemicScoring
    from lib.config import ScoringSettings
    from lib.studies.folder_datastore import StudyFolderDatastore

    scoring = EpistemicScoring(PROFILES["cpu"], lambda: None, ScoreStore(tmp_path / "s"), ScoringSettings())
    assert scoring({}, StudyFolderDatastore(studies_copy, tmp_path / "ws"))["scored"] == 0


# --- under a trained model --------------------------------------------------------------------------


@pytest.mark.parametrize("index", [30, 31])
def test_ambiguous_case_scores_higher_than_clean_under_the_same_model(trained_weights, tmp_path, index):
    from lib.activelearning.scoring import EpistemicScoring
    from lib.config import ScoringSettings
    from lib.model.network import load_network
    from lib.studies.folder_datastore import StudyFolderDatastore
    from synthetic import generate_study
    from synthetic.layouts import write_study

    network = load_network(PROFILES["cpu"], trained_weights, torch.device("cpu"))
    scoring = EpistemicScoring(PROFILES["cpu"], lambda: str(trained_weights), ScoreStore(tmp_path / "s"), ScoringSettings())
    scores = {}
    for name, kwargs in {"clean": {}, "ambiguous": {"tumour_contrast": 0.35, "noise_scale": 3.0}}.items():
        study = generate_study(21, index, spacing_mm=2.0, case_id=f"case-{name}", **kwargs)
        write_study(study, tmp_path / name, "brats2023", with_label=False)
        datastore = StudyFolderDatastore(tmp_path / name, tmp_path / f"ws-{name}")
        scores[name] = scoring.score_case(datastore.get_image_uri(f"case-{name}"), network, generator_seed=0)["score"]
    assert scores["ambiguous"] > scores["clean"], scores
