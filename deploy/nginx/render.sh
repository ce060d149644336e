#!/bin/sh
# Render the TLS proxy's configuration from the environment (only these names; nginx's $variables stay).
# Usage: render.sh <template> <output>
set -eu
: "${BRATS_LABEL_HOSTNAME:?set BRATS_LABEL_HOSTNAME (the name annotators type)}"
: "${TLS_CERT:?set TLS_CERT (certificate file)}" "${TLS_KEY:?set TLS_KEY (key file)}"
export HTTPS_PORT="${HTTPS_PORT:-443}" SERVER_UPSTREAM="${SERVER_UPSTREAM:-127.0.0.1:8000}" IDP_UPSTREAM="${IDP_UPSTREAM:-127.0.0.1:8080}" MAX_UPLOAD_MB="${MAX_UPLOAD_MB:-256}"
envsubst '${BRATS_LABEL_HOSTNAME} ${HTTPS_PORT} ${TLS_CERT} ${TLS_KEY} ${SERVER_UPSTREAM} ${IDP_UPSTREAM} ${MAX_UPLOAD_MB}' < "$1" > "$2"
