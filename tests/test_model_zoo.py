"""Starting weights from the model zoo by name: fetched once through MONAI's bundle download, then offline.

The zoo is played by a local HTTP server that serves an archive shaped like the zoo's brats_mri_segmentation
bundle (``<name>/configs/metadata.json``, ``<name>/models/model.pt``: weights of the bundle's network).
"""

from __future__ import annotations

import functools
import json
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import monai
import pytest
import requests
import torch

from lib.config import PROFILES, ZOO_BUNDLES, AppConfig, ConfigError
from lib.model.model_zoo import ZooBundle, fetch_weights
from lib.model.network import build_network, check_weights, read_state_dict
from tests.conftest import make_studies

NAME = "brats_mri_segmentation"
VERSION = ZOO_BUNDLES[NAME]
URL_TEMPLATE = "/{name}_v{version}.zip"


def bundle_archive(folder: Path, version: str, declared: str) -> Path:
    """A zip as the zoo publishes: one top folder named after the bundle."""
    torch.manual_seed(0)
    weights = folder / "model.pt"
    torch.save(build_network(PROFILES["bundle"]).state_dict(), weights)
    archive = folder / f"{NAME}_v{version}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"{NAME}/configs/metadata.json", json.dumps({"version": declared, "monai_version": monai.__version__, "name": "BraTS MRI segmentation"}))
        z.write(weights, f"{NAME}/models/model.pt")
    return archive


class Zoo:
    """A local HTTP server over a folder of bundle archives, counting requests."""

    def __init__(self, folder: Path):
        self.requests = 0
        zoo = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                zoo.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def zoo(tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    bundle_archive(folder, VERSION, VERSION)
    bundle_archive(folder, "0.4.0", "0.5.3")  # an archive that says it is another version
    served = Zoo(folder)
    yield served, folder
    served.stop()


def test_a_zoo_name_is_fetched_once_and_then_used_offline(zoo, tmp_path):
    server, folder = zoo
    config = AppConfig.from_conf({"pretrained_weights": f"zoo:{NAME}", "zoo_url": server.url + URL_TEMPLATE})
    assert config.profile.name == "bundle" and config.pretrained_zoo == ZooBundle(NAME, VERSION)
    cache = tmp_path / "workspace" / "model_zoo"
    weights = fetch_weights(config.pretrained_zoo, cache, config.zoo_url)
    assert weights == cache / NAME / VERSION / NAME / "models" / "model.pt" and server.requests == 1
    state = read_state_dict(weights)
    check_weights(state, config.profile, weights)
    with zipfile.ZipFile(folder / f"{NAME}_v{VERSION}.zip") as z, z.open(f"{NAME}/models/model.pt") as served:
        expected = torch.load(served, weights_only=True)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    server.stop()  # offline from now on
    assert fetch_weights(config.pretrained_zoo, cache, config.zoo_url) == weights


def test_offline_and_not_fetched_says_what_to_download_and_where(zoo, tmp_path):
    server, _ = zoo
    server.stop()
    cache = tmp_path / "workspace" / "model_zoo"
    with pytest.raises(ConfigError) as refused:
        fetch_weights(ZooBundle(NAME, VERSION), cache, server.url + URL_TEMPLATE)
    message = str(refused.value)
    assert f"python -m monai.bundle download --name {NAME} --version {VERSION}" in message
    assert str(cache / NAME / VERSION / NAME / "models" / "model.pt") in message
    assert not (cache / NAME / VERSION).exists(), "nothing half-fetched is left to be taken for a bundle"


def test_an_archive_of_another_version_is_refused(zoo, tmp_path):
    server, _ = zoo
    cache = tmp_path / "model_zoo"
    with pytest.raises(ConfigError, match="asked for version 0.4.0, the archive fetched is 0.5.3"):
        fetch_weights(ZooBundle(NAME, "0.4.0"), cache, server.url + URL_TEMPLATE)
    assert not (cache / NAME / "0.4.0").exists()


@pytest.mark.parametrize("spec", ["zoo:../../etc", "zoo:spleen_ct_segmentation", f"zoo:{NAME}@../1", f"zoo:{NAME}@latest"])
def test_only_known_bundles_and_plain_versions_are_taken(spec):
    with pytest.raises(ConfigError, match="--conf pretrained_weights"):
        AppConfig.from_conf({"pretrained_weights": spec})


def test_the_server_starts_from_zoo_weights_and_serves_them_as_version_0(zoo, tmp_path, server_factory):
    server, _ = zoo
    studies = make_studies(tmp_path / "studies", cases=2, labelled=1, seed=5)
    started = server_factory(studies, profile="bundle", pretrained_weights=f"zoo:{NAME}@{VERSION}", zoo_url=server.url + URL_TEMPLATE)
    models = requests.get(f"{started.url}/brats/models", timeout=30).json()
    first = models["versions"][0]
    assert first["id"] == "v0" and models["serving"] == "v0" and f"model_zoo/{NAME}/{VERSION}/{NAME}/models/model.pt" in first["source"]
