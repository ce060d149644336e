"""``GET /datastore/image`` that also prepares the study's auto-segmentation.

3D Slicer downloads a study's volume before the annotator asks for its auto-segmentation, also when it opens a
study by its id rather than through Next Sample. The download itself is MONAI Label's; once the file exists
(built from the archive for a DICOMweb study), the app reads and resamples the model's input in the background
while the client is still downloading and displaying it. ``HEAD`` (Slicer's existence check) prepares nothing.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI
from monailabel.config import settings
from monailabel.endpoints.datastore import download_image
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.utils.app import app_instance
from starlette.responses import Response

from .routes import add_route_in_front

logger = logging.getLogger(__name__)


def download_image_and_prepare(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))) -> Response:
    response = download_image(image)  # an unknown or broken study raises here: nothing is prepared for it
    try:
        instance: MONAILabelApp = app_instance()
        downloaded = getattr(instance, "image_downloaded", None)
        if downloaded is not None:
            downloaded(image)
    except Exception as e:  # never in the way of the download
        logger.warning(f"Study {image} downloaded, not prepared ahead: {e}")
    return response


def install_image_download_route(app: FastAPI) -> None:
    add_route_in_front(app, "/datastore/image", download_image_and_prepare, ["GET"], "Download Image (and prepare its auto-segmentation)")
