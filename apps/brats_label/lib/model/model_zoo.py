"""Starting weights from the MONAI model zoo, asked for by name: ``--conf pretrained_weights zoo:<bundle>[@<version>]``.

The bundle is fetched with MONAI's own bundle download (``monai.bundle.download``: MONAI's hosting by default,
or ``--conf zoo_url`` with ``{name}`` and ``{version}`` for a lab's mirror) into the workspace, once; after that
the server starts offline. Offline and not yet fetched, start-up stops saying what to download and where to put it.
Only bundles whose network this app builds are accepted (``config.ZOO_BUNDLES``): a name becomes a folder.
``config.ZooBundle`` parses the name with the rest of ``--conf``; this module fetches and checks the bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..config import WEIGHTS_IN_BUNDLE, ConfigError, ZooBundle

logger = logging.getLogger(__name__)


def fetch_weights(bundle: ZooBundle, cache: Path, url_template: Optional[str] = None) -> Path:
    """The bundle's ``models/model.pt``, fetched into ``cache`` if it is not there yet."""
    weights = bundle.weights(cache)
    if weights.is_file():
        return weights
    from monai.bundle import download

    target = cache / bundle.name / bundle.version
    target.parent.mkdir(parents=True, exist_ok=True)
    url = url_template.format(name=bundle.name, version=bundle.version) if url_template else None
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as scratch:
        try:
            logger.info(f"fetching model-zoo bundle {bundle.name} {bundle.version} from {url or 'MONAI hosting'}")
            download(name=bundle.name, version=bundle.version, bundle_dir=scratch, url=url, progress=False)
        except Exception as e:  # offline, mirror down, no such version: say what to do instead
            raise ConfigError(_cannot_fetch(bundle, cache, url, e)) from None
        fetched = Path(scratch) / bundle.name
        _check_bundle(bundle, fetched)
        if target.exists():
            shutil.rmtree(target)  # an earlier fetch cut short (no weights in it)
        target.mkdir()
        fetched.rename(target / bundle.name)  # whole or not at all
    return weights


def _check_bundle(bundle: ZooBundle, folder: Path) -> None:
    if not (folder / WEIGHTS_IN_BUNDLE).is_file():
        raise ConfigError(f"model-zoo bundle {bundle.name} {bundle.version} has no {WEIGHTS_IN_BUNDLE}: not a bundle this app can start from")
    try:
        declared = json.loads((folder / "configs" / "metadata.json").read_text()).get("version")
    except (OSError, ValueError):
        declared = None
    if declared is not None and declared != bundle.version:
        raise ConfigError(f"model-zoo bundle {bundle.name}: asked for version {bundle.version}, the archive fetched is {declared}")


def _cannot_fetch(bundle: ZooBundle, cache: Path, url: Optional[str], error: Exception) -> str:
    source = f"from {url}" if url else "from MONAI's model hosting"
    return (
        f"--conf pretrained_weights zoo:{bundle.name}@{bundle.version}: not yet in {cache} and it could not be fetched "
        f"{source} ({type(error).__name__}: {error}). On a machine with internet: "
        f"python -m monai.bundle download --name {bundle.name} --version {bundle.version} --bundle_dir <folder>; "
        f"then copy <folder>/{bundle.name} to {bundle.folder(cache)} (its weights at {bundle.weights(cache)}), "
        f"or start with --conf pretrained_weights <path to {bundle.name}/models/model.pt>"
    )
