"""Studies: finding, checking and opening the 4-channel MR studies, over a folder or a DICOMweb archive, and their stacked volumes."""
