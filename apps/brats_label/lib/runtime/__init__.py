"""Runtime plumbing: crash-safe files, shared state under cross-process locks, worker processes, the inference queue, the clock."""
