"""BraTS Label app library (see ../main.py): config.py and errors.py, then studies/, labels/, model/, runtime/, dicom/, endpoints/, infers/, trainers/, activelearning/."""
