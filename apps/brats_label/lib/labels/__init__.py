"""Labels: label-value conventions, uploaded label files, every committed label version, and the audit of corrections."""
