"""Interactive refinement: an annotator's clicks per label, placed where they were clicked, as guidance channels."""
