#!/usr/bin/env bash
# Debian packages the archive mode and its tests need: Orthanc with its DICOMweb and PostgreSQL index plugins,
# PostgreSQL (an archive beyond one machine: tests/test_orthanc_postgresql.py), dicom3tools
# (dciodvfy checks every DICOM object we write), dcmtk and GDCM's tools (storescu: a modality sending studies;
# dcmcjpeg, dcmcjpls, dcmcrle, gdcmconv: compressed test studies), docker-compose
# (validates the compose files), chromium (OHIF browser tests), nginx and gettext-base (the team deployment's
# TLS proxy and its envsubst).
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail
packages=(orthanc orthanc-dicomweb orthanc-postgresql postgresql dicom3tools dcmtk libgdcm-tools docker-compose chromium nginx gettext-base)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "==> installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts an Orthanc service on 8042 with its own configuration: ours runs from orthanc/orthanc.json.
if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then $SUDO systemctl stop orthanc || true; fi
if command -v service >/dev/null; then $SUDO service orthanc stop >/dev/null 2>&1 || true; fi
# Likewise PostgreSQL's cluster: the tests make clusters of their own (scripts/local_postgres.py).
if command -v service >/dev/null; then $SUDO service postgresql stop >/dev/null 2>&1 || true; fi
# Likewise nginx: the deployment's TLS proxy runs from deploy/nginx with its own configuration.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then $SUDO systemctl stop nginx || true; fi
if command -v service >/dev/null; then $SUDO service nginx stop >/dev/null 2>&1 || true; fi
