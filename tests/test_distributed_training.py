"""Training on PyTorch's distributed engine: scripts/train_distributed.py under torchrun, 2 CPU processes (gloo)
against 1, on copies of one server workspace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import requests

from .conftest import LOOP_PATCH, REPO

pytestmark = pytest.mark.server

TOLERANCE = 0.1  # held-out mean Dice, 2 processes against 1: the same epochs, but a split dataset and twice the batch


def _torchrun(processes: int, studies, weights) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), str(REPO / "scripts" / "train_distributed.py")]
    command += ["--studies", str(studies), "--conf", "profile", "cpu", "--conf", "pretrained_weights", str(weights)]
    command += ["--request", json.dumps({"max_epochs": 3, "seed": 5, "patch_size": LOOP_PATCH})]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _version(studies, version: str) -> dict:
    return json.loads((studies / ".brats_label" / "model" / "versions" / version / "version.json").read_text())


def test_two_processes_train_as_one_and_the_server_serves_their_version(studies_2mm, trained_weights, server_factory, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(studies_2mm, one, ignore=shutil.ignore_patterns(".brats_label"))
    server_factory(one, pretrained_weights=trained_weights, retrain_after_labels=0).stop()  # labels imported, v0 served
    shutil.copytree(one, two)

    log_one, log_two = _torchrun(1, one, trained_weights), _torchrun(2, two, trained_weights)

    digests = re.findall(r"rank (\d) of 2: final weights (\w+)", log_two)
    assert sorted(r for r, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1, "DDP keeps the ranks' weights identical"
    assert len(re.findall(r"\d - Records for Training: 2", log_two)) == 2, "the three training studies are split between the ranks"
    single, double = _version(one, "v1"), _version(two, "v1")
    assert (single["processes"], double["processes"]) == (1, 2) and single["seed"] == double["seed"] == 5
    assert single["held_out"] == double["held_out"] and single["labels"] == double["labels"]
    assert abs(single["validation_dice"]["mean"] - double["validation_dice"]["mean"]) <= TOLERANCE, (single["validation_dice"], double["validation_dice"])
    assert "final weights" not in log_one, "one process is not a process group"

    # the training never served anything itself; the server serves the version when it starts
    assert json.loads((two / ".brats_label" / "model" / "serving.json").read_text())["version"] == "v0"
    server = server_factory(two, pretrained_weights=trained_weights, retrain_after_labels=0)
    models = requests.get(f"{server.url}/brats/models", timeout=30).json()
    assert models["serving"] == ("v1" if double["promoted"] else "v0"), double["reason"]


def test_it_refuses_to_start_outside_torchrun(studies_2mm):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train_distributed.py"), "--studies", str(studies_2mm)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "start it with torchrun" in result.stderr
