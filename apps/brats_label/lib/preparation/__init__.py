"""Studies as they come off the scanner made into what a BraTS model learned from: the sequences aligned to
the T1c by their images, the brain extracted, everything on the T1c's own grid."""
