"""The DICOMweb archive (Orthanc or any QIDO/WADO/STOW server), through dicomweb-client.

One place that knows how to connect (credentials from MONAI Label's DICOMweb settings, a timeout on
every request) and turns "the archive did not answer" into an error a user can act on.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter
from requests_toolbelt.multipart.decoder import ImproperBodyPartContentException, MultipartDecoder, NonMultipartContentTypeException
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from ..config import ARCHIVE_RECONNECTS, DICOMWEB_LISTING_PAGE, DICOMWEB_TIMEOUT_S
from ..errors import ArchiveUnavailable
from .sequence_classifier import Acquisition
from .series_rules import SeriesSummary

PIXEL_DATA_TAG = "7FE00010"
ACCEPT_UNCOMPRESSED = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'  # explicit VR little endian
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CANNOT_TRANSCODE = (400, 406, 415, 500, 501)  # what archives answer when they cannot send a syntax
RETRIEVE_CHUNK_BYTES = 1 << 20
SERIES_FIELDS = ["SeriesDescription", "ProtocolName", "Modality", "NumberOfSeriesRelatedInstances", "SeriesNumber", "SeriesDate", "SeriesTime"]
# What one instance says of how its series was acquired (sequence_classifier): tags, as QIDO-RS names them.
ACQUISITION_FIELDS = {
    "image_type": "00080008",
    "repetition_time": "00180080",
    "echo_time": "00180081",
    "inversion_time": "00180082",
    "scanning_sequence": "00180020",
    "sequence_variant": "00180021",
    "acquisition_type": "00180023",
    "contrast_agent": "00180010",
    "diffusion_b_value": "00189087",
    "temporal_positions": "00200105",
}


def _first(element: Dict[str, Any], default: Any = "") -> Any:
    values = (element or {}).get("Value") or [default]
    value = values[0]
    return value.get("Alphabetic", default) if isinstance(value, dict) else value


def _text(item: Dict[str, Any], tag: str) -> str:
    return str(_first(item.get(tag, {}), ""))


PATIENT_AND_DATE = ("00100020", "00080020", "00080030")  # PatientID, StudyDate, StudyTime


def patient_and_date(item: Dict[str, Any]) -> Tuple[str, str, str]:
    """PatientID, StudyDate and StudyTime of a DICOM JSON item (study search result or instance metadata)."""
    patient, date, time = (_text(item, tag) for tag in PATIENT_AND_DATE)
    return patient, date, time


def _acquisition(item: Dict[str, Any]) -> Acquisition:
    """An instance's (or a series') acquisition attributes from its DICOM JSON."""

    def values(tag: str) -> tuple:
        return tuple(str(v) for v in (item.get(tag, {}) or {}).get("Value", []) if v is not None)

    def number(tag: str) -> Optional[float]:
        try:
            return float(values(tag)[0])
        except (IndexError, ValueError):
            return None

    temporal = number(ACQUISITION_FIELDS["temporal_positions"])
    return Acquisition(
        repetition_time=number(ACQUISITION_FIELDS["repetition_time"]),
        echo_time=number(ACQUISITION_FIELDS["echo_time"]),
        inversion_time=number(ACQUISITION_FIELDS["inversion_time"]),
        scanning_sequence=values(ACQUISITION_FIELDS["scanning_sequence"]),
        sequence_variant=values(ACQUISITION_FIELDS["sequence_variant"]),
        acquisition_type=(values(ACQUISITION_FIELDS["acquisition_type"]) or ("",))[0],
        contrast_agent=" ".join(values(ACQUISITION_FIELDS["contrast_agent"])),
        image_type=values(ACQUISITION_FIELDS["image_type"]),
        diffusion_b_value=number(ACQUISITION_FIELDS["diffusion_b_value"]),
        temporal_positions=int(temporal) if temporal is not None else None,
    )


def series_from_metadata(metadata: Dict[str, List[Dict[str, Any]]]) -> List[SeriesSummary]:
    """What a series search says of each series, from the study's instance metadata (``Archive.study_metadata``)."""
    summaries = []
    for series_uid, instances in metadata.items():
        first = instances[0]
        summaries.append(
            SeriesSummary(
                series_uid=series_uid,
                modality=_text(first, "00080060"),
                description=_text(first, "0008103E"),
                protocol=_text(first, "00181030"),
                instances=len(instances),
                number=int(_first(first.get("00200011", {}), 0) or 0) or None,
                time=_text(first, "00080031"),
                acquisition=_acquisition(first) if _text(first, "00080060") == "MR" else None,
            )
        )
    return summaries


class ArchiveAddress(NamedTuple):
    """What another process needs to open its own connection to the archive."""

    url: str
    username: str
    password: str
    timeout_s: float


class StaleConnectionRetry(Retry):
    """Sends a request again, once, on a fresh connection when the archive dropped the kept-alive one it went out on.

    Orthanc closes a kept-alive connection once it has been idle a short while. A request that leaves on it as it closes
    fails with "connection aborted" although the archive is up. Timeouts are never retried: a hung archive is
    reported after one timeout, not several."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("total", ARCHIVE_RECONNECTS)
        kwargs.setdefault("status", 0)
        kwargs.setdefault("redirect", 0)
        kwargs.setdefault("raise_on_status", False)
        kwargs.setdefault("raise_on_redirect", False)
        kwargs.setdefault("allowed_methods", frozenset({"GET", "HEAD"}))  # a STOW-RS body is never sent twice
        super().__init__(**kwargs)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[no-untyped-def,override]
        if isinstance(error, ReadTimeoutError):
            raise error
        if isinstance(error, ConnectTimeoutError):
            raise MaxRetryError(_pool, url, error) from error  # what requests reports as ConnectTimeout
        return super().increment(method, url, response, error, _pool, _stacktrace)


def archive_session(username: str, password: str, timeout_s: float) -> requests.Session:
    """An HTTP session for the archive: its credentials, a timeout on every request, and a reconnect when a kept-alive
    connection was dropped under a request."""
    session = create_session_from_user_pass(username, password) if username else create_session()
    session.request = functools.partial(session.request, timeout=timeout_s)  # type: ignore[method-assign]
    adapter = HTTPAdapter(max_retries=StaleConnectionRetry())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Archive:
    def __init__(self, url: str, username: str = "", password: str = "", timeout_s: float = DICOMWEB_TIMEOUT_S):
        self.address = ArchiveAddress(url, username, password, timeout_s)
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(url=self.url, session=archive_session(username, password, timeout_s))
        # Its default retries every failure five times with back-off (about 15 s before an error):
        # an annotator waiting on a stopped archive should hear so at once.
        self.client.set_http_retry_params(retry=False)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except requests.exceptions.ConnectionError:
            raise ArchiveUnavailable(f"the DICOMweb archive at {self.url} does not answer ({what}); check that Orthanc is running, then try again") from None
        except requests.exceptions.Timeout:
            raise ArchiveUnavailable(f"the DICOMweb archive at {self.url} did not answer in time ({what}); try again") from None
        except requests.exceptions.HTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            if status in (401, 403):
                raise ArchiveUnavailable(
                    f"the DICOMweb archive at {self.url} refused the credentials ({what}, HTTP {status}); set MONAI_LABEL_DICOMWEB_USERNAME/PASSWORD"
                ) from None
            raise ArchiveUnavailable(f"the DICOMweb archive at {self.url} answered HTTP {status} to {what}") from None

    def studies(self, page: int = DICOMWEB_LISTING_PAGE) -> List[Dict[str, Any]]:
        """Every study's UID and instance count, ``page`` studies a request (QIDO-RS limit/offset); patient
        attributes are neither asked for nor kept."""
        studies: List[Dict[str, Any]] = []
        while True:
            found = self._call("study search", self.client.search_for_studies, fields=["StudyInstanceUID", "NumberOfStudyRelatedInstances"], limit=page, offset=len(studies))
            studies += [{"study_uid": _text(s, "0020000D"), "instances": int(_first(s.get("00201208", {}), 0) or 0)} for s in found]
            if len(found) < page:
                return studies

    def study_patient_and_date(self, study_uid: str) -> Tuple[str, str, str]:
        """PatientID, StudyDate and StudyTime of one study (one study search), for grouping a patient's studies
        into a timeline; the caller turns the identifier into a pseudonym at once."""
        found = self._call("study search", self.client.search_for_studies, search_filters={"StudyInstanceUID": study_uid}, fields=list(PATIENT_AND_DATE))
        return patient_and_date(found[0] if found else {})

    def series(self, study_uid: str) -> List[SeriesSummary]:
        """A study's series, each with its acquisition where the archive answers instance attributes at series
        level (Orthanc reads them from one instance): one request for the whole study."""
        found = self._call("series search", self.client.search_for_series, study_instance_uid=study_uid, fields=SERIES_FIELDS + list(ACQUISITION_FIELDS.values()))
        return [
            SeriesSummary(
                series_uid=_text(s, "0020000E"),
                modality=_text(s, "00080060"),
                description=_text(s, "0008103E"),
                protocol=_text(s, "00181030"),
                instances=int(_first(s.get("00201209", {}), 0) or 0),
                number=int(_first(s.get("00200011", {}), 0) or 0) or None,
                time=_text(s, "00080031"),
                acquisition=_acquisition(s) if any(tag in s for tag in ACQUISITION_FIELDS.values()) else None,
            )
            for s in found
        ]

    def acquisition(self, study_uid: str, series_uid: str) -> Acquisition:
        """How a series was acquired, from the header of one of its instances (one QIDO-RS request)."""
        found = self._call(
            "acquisition search",
            self.client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            fields=list(ACQUISITION_FIELDS.values()),
            limit=1,
        )
        return _acquisition(found[0] if found else {})

    def instance_uids(self, study_uid: str, series_uid: str) -> List[str]:
        found = self._call("instance search", self.client.search_for_instances, study_instance_uid=study_uid, series_instance_uid=series_uid)
        return [_text(i, "00080018") for i in found]

    def study_metadata(self, study_uid: str) -> Dict[str, List[Dict[str, Any]]]:
        """Per-instance DICOM JSON of a whole study (no pixel data reference), by series UID."""
        found = self._call("study metadata", self.client.retrieve_study_metadata, study_uid)
        series: Dict[str, List[Dict[str, Any]]] = {}
        for item in found:
            item.pop(PIXEL_DATA_TAG, None)
            series.setdefault(_text(item, "0020000E"), []).append(item)
        return series

    def series_metadata(self, study_uid: str, series_uid: str) -> List[Dict[str, Any]]:
        """Per-instance DICOM JSON without the pixel data reference."""
        found = self._call("series metadata", self.client.retrieve_series_metadata, study_uid, series_uid)
        for item in found:
            item.pop(PIXEL_DATA_TAG, None)
        return found

    def retrieve_series(self, study_uid: str, series_uid: str) -> List[Dataset]:
        """All instances of a series in one WADO-RS request.

        The whole multipart body is split by requests-toolbelt rather than streamed through
        dicomweb-client's parser, which costs more than the transfer itself (half the time to open a
        BraTS-size study, measured by bench/dicomweb_fetch.py).

        Archives keep MR compressed (JPEG Lossless, JPEG-LS, JPEG 2000, RLE, deflated): the archive is asked to
        send it uncompressed (WADO-RS transfer-syntax; Orthanc 1.10 transcodes all but JPEG 2000 with DCMTK).
        What an archive cannot transcode comes as stored, and pydicom decodes it here (pylibjpeg and its plugins).
        """
        url = f"{self.url}/studies/{study_uid}/series/{series_uid}"
        response = self._call("series retrieval", self._get_transcoded, url)
        try:
            body = self._call("series retrieval", lambda: b"".join(response.iter_content(RETRIEVE_CHUNK_BYTES)))
            parts = MultipartDecoder(body, response.headers.get("Content-Type", "")).parts
            return [pydicom.dcmread(io.BytesIO(part.content), force=True) for part in parts]
        except (ImproperBodyPartContentException, NonMultipartContentTypeException, InvalidDicomError) as e:
            raise ArchiveUnavailable(f"the archive at {self.url} sent an unreadable answer for series {series_uid} ({e})") from None

    def _get_transcoded(self, url: str) -> requests.Response:
        """Streamed: the caller reads the body in large chunks (requests' own ``content`` reads 10 kB at a time,
        a fifth of a series' decoding time in Python)."""
        response = self.client._session.get(url, headers={"Accept": ACCEPT_UNCOMPRESSED}, stream=True)
        if response.status_code in CANNOT_TRANSCODE:
            response.close()
            response = self.client._session.get(url, headers={"Accept": ACCEPT_AS_STORED}, stream=True)
        response.raise_for_status()
        return response

    def _get_or_404(self, url: str) -> Optional[requests.Response]:
        response = self.client._session.get(url)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        return self._call("instance retrieval", self.client.retrieve_instance, study_uid, series_uid, sop_uid)

    def store(self, datasets: Sequence[Dataset]) -> None:
        for ds in datasets:
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\x00" * 128  # STOW-RS takes Part 10 files: preamble and 'DICM'
        self._call("STOW-RS store", self.client.store_instances, list(datasets))

    def study_instance_count(self, study_uid: str) -> Optional[int]:
        """Instances the archive holds for the study, or None when it has none."""
        series = self.series(study_uid)
        return sum(s.instances for s in series) if series else None
