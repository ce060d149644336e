"""BraTS Label app library: configuration, datastore, tasks and transforms (see ../main.py)."""
