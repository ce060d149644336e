#!/usr/bin/env bash
# Start a local Orthanc (Debian's orthanc + orthanc-dicomweb) with BraTS Label's configuration.
#
#   bash scripts/orthanc.sh [storage folder]        (default data/orthanc)
#
# Loopback only. Credentials come from the environment (ORTHANC_USER, ORTHANC_PASSWORD), never from
# the configuration file; the demo sets its own in orthanc/demo.env. Ports: ORTHANC_HTTP_PORT (8042),
# ORTHANC_DICOM_PORT (4242). DICOM (C-STORE) is taken only from the modalities named in
# ORTHANC_DICOM_MODALITIES (Orthanc's DicomModalities as JSON, e.g. '{"MRI1": ["MRI1", "10.0.0.12", 104]}'),
# called as ORTHANC_AET (BRATSLABEL); none by default. Runs in the foreground; stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_packages.sh
: "${ORTHANC_USER:?set ORTHANC_USER and ORTHANC_PASSWORD (for the demo: set -a; . orthanc/demo.env; set +a)}"
: "${ORTHANC_PASSWORD:?set ORTHANC_PASSWORD}"
export ORTHANC_STORAGE=${1:-${ORTHANC_STORAGE:-data/orthanc}}
export ORTHANC_HTTP_PORT=${ORTHANC_HTTP_PORT:-8042} ORTHANC_DICOM_PORT=${ORTHANC_DICOM_PORT:-4242}
export ORTHANC_AET=${ORTHANC_AET:-BRATSLABEL} ORTHANC_DICOM_MODALITIES=${ORTHANC_DICOM_MODALITIES:-"{}"}
mkdir -p "$ORTHANC_STORAGE"
export ORTHANC_STORAGE=$(cd "$ORTHANC_STORAGE" && pwd)
echo "==> Orthanc on http://127.0.0.1:$ORTHANC_HTTP_PORT (DICOMweb: /dicom-web), storage $ORTHANC_STORAGE"
exec Orthanc orthanc/orthanc.json
