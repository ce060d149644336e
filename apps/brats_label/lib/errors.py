"""Errors a user can act on: plain exceptions, each naming the HTTP status it stands for.

Domain code raises these and knows nothing of HTTP; ``endpoints.routes.answer_domain_errors`` turns each
into an answer with its status and message, in one place (MONAI Label would turn any other exception
into a bare 500).
"""

from __future__ import annotations


class BratsLabelError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
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
