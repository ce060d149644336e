"""Which studies belong to one patient, and when each was acquired: what a follow-up timeline is ordered by.

A patient's identifier is read only to group studies. It becomes a salted pseudonym at once (HMAC-SHA256 under a
key made once per workspace, never sent anywhere), and only the pseudonym is kept, listed or logged: the same
patient gets the same pseudonym on this server across restarts, and nobody without the key can go back.

- From an archive: PatientID, StudyDate and StudyTime of the study (its instances' metadata, or one study search).
- From a folder: a table ``patients.csv`` beside the studies, one row per study, as a lab writes it::

      study,patient,acquired
      BraTS-GLI-00001-000,P001,2024-01-03
      BraTS-GLI-00001-001,P001,2024-04-11T09:30

  A row that names no listed study, or whose date cannot be read, is a listed problem with its row number; the
  study itself is still served, just on no timeline.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .folder_layout import StudyProblem

PATIENT_TABLE = "patients.csv"
PATIENT_TABLE_COLUMNS = ("study", "patient", "acquired")
PATIENT_TABLE_MAX_BYTES = 16 * 2**20  # a table of some 100 000 studies; a larger file is refused, not read
KEY_FILE = "patient_pseudonym.key"
KEY_BYTES = 32
PSEUDONYM_HEX = 16  # 64 bits: no collision among a lab's patients


@dataclass(frozen=True)
class StudyMoment:
    """Whose study it is (a pseudonym) and when it was acquired (ISO 8601, '' when the source does not say)."""

    patient: str
    acquired: str


class Pseudonyms:
    """The workspace's pseudonym of a patient identifier. The key is made by whichever process comes first, linked
    into place whole (a reader never sees half a key), and read by the others."""

    def __init__(self, workspace: Path):
        path = Path(workspace) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            draft.write_bytes(secrets.token_bytes(KEY_BYTES))
            os.chmod(draft, 0o600)
            try:
                os.link(draft, path)
            except FileExistsError:
                pass  # another process linked its key first: that one is the key
            finally:
                draft.unlink()
        self._key = path.read_bytes()
        if len(self._key) != KEY_BYTES:
            raise RuntimeError(f"{path} is not a pseudonym key ({len(self._key)} bytes, expected {KEY_BYTES}); move it aside to make a new one")

    def __call__(self, patient_id: str) -> str:
        digest = hmac.new(self._key, patient_id.strip().encode(), hashlib.sha256).hexdigest()
        return f"patient-{digest[:PSEUDONYM_HEX]}"


def dicom_acquired(date: str, time: str = "") -> str:
    """StudyDate (YYYYMMDD) and StudyTime (HHMMSS.FFFFFF, any prefix of it) as ISO 8601; '' if the date is unusable."""
    date, time = (date or "").strip(), (time or "").strip().split(".")[0]
    try:
        day = datetime.strptime(date, "%Y%m%d")
    except ValueError:
        return ""
    digits = "".join(c for c in time if c.isdigit())[:6]
    if len(digits) >= 2 and len(digits) % 2 == 0:
        parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)] + [0, 0]
        try:
            return day.replace(hour=parts[0], minute=parts[1], second=parts[2]).isoformat()
        except ValueError:
            pass  # a malformed time: the day alone still orders the studies
    return day.date().isoformat()


def iso_acquired(text: str) -> str:
    """A table's date (ISO 8601: a day, or a day and time) normalised; raises ValueError saying what it expected."""
    text = text.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text[:40]}' is not a date: write it as 2024-01-03 or 2024-01-03T09:30") from None
    return parsed.date().isoformat() if len(text) <= len("2024-01-03") else parsed.replace(tzinfo=None).isoformat()


def read_patient_table(path: Path, known_studies: Iterable[str], pseudonyms: Pseudonyms) -> Tuple[Dict[str, StudyMoment], List[StudyProblem]]:
    """The table's studies with their patient's pseudonym and date, and its rows that could not be used (by row
    number, never quoting the patient column)."""
    if not path.is_file():
        return {}, []
    name = path.name
    if path.stat().st_size > PATIENT_TABLE_MAX_BYTES:
        return {}, [StudyProblem(name, name, f"{name} is larger than {PATIENT_TABLE_MAX_BYTES // 2**20} MB: not read; split it or leave out what is not a study")]
    known = set(known_studies)
    moments: Dict[str, StudyMoment] = {}
    problems: List[StudyProblem] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.DictReader(f)
        missing = [c for c in PATIENT_TABLE_COLUMNS if c not in (rows.fieldnames or [])]
        if missing:
            return {}, [StudyProblem(name, name, f"{name} lacks the column(s) {', '.join(missing)}: its first line must be {','.join(PATIENT_TABLE_COLUMNS)}")]
        for number, row in enumerate(rows, start=2):
            study, patient = (row.get("study") or "").strip(), (row.get("patient") or "").strip()
            where = f"{name} row {number}"
            if study not in known:
                problems.append(StudyProblem(study[:80] or where, where, f"{where} names no study of this folder: left out"))
                continue
            if not patient:
                problems.append(StudyProblem(study, where, f"{where} gives no patient: the study is on no timeline"))
                continue
            try:
                acquired = iso_acquired(row.get("acquired") or "")
            except ValueError as e:
                problems.append(StudyProblem(study, where, f"{where}: {e}; the study is on no timeline"))
                continue
            if study in moments:
                problems.append(StudyProblem(study, where, f"{where} names the study a second time: the first row is kept"))
                continue
            moments[study] = StudyMoment(pseudonyms(patient), acquired)
    return moments, problems


def studies_of_patient(moments: Dict[str, StudyMoment], case: str) -> List[Tuple[str, StudyMoment]]:
    """Every study of ``case``'s patient, oldest first (undated studies last, then by id), or just ``case``."""
    own: Optional[StudyMoment] = moments.get(case)
    if own is None:
        return []
    studies = [(study, moment) for study, moment in moments.items() if moment.patient == own.patient]
    return sorted(studies, key=lambda item: (item[1].acquired == "", item[1].acquired, item[0]))
