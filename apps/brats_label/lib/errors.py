"""Errors a user can act on. Each carries the HTTP status MONAI Label's endpoints should answer with.

MONAI Label turns any other exception into a bare 500; these subclass FastAPI's HTTPException, so the
client sees the status and the message, while code outside the server can still catch them.
"""

from __future__ import annotations

from fastapi import HTTPException


class BratsLabelError(HTTPException):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(status_code=self.status_code, detail=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(BratsLabelError):
    """The request or uploaded file is wrong; nothing was stored."""

    status_code = 422


class NotAllowed(BratsLabelError):
    status_code = 405


class ModelNotReady(BratsLabelError):
    """No weights to run yet (cold start), or the weights file does not fit the network."""

    status_code = 409


class NotFound(BratsLabelError):
    """No study or label with that id."""

    status_code = 404


class ArchiveUnavailable(BratsLabelError):
    """The DICOMweb archive did not answer; nothing was changed, try again when it is back."""

    status_code = 503
