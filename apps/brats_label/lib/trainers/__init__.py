"""Training tasks: fine-tuning, model versions and their promotion, and when the server retrains by itself."""
