"""The lab lead's page: model versions, pre-label quality in use, input drift, the work queue and training."""
