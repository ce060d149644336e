"""Active learning: how unsure the model is about each unlabelled case, and which case to label next.

uncertainty.py (the measure), sampling.py (MC dropout and test-time flips), scores.py (scores stamped
with the model version), scoring.py (the background scoring task), strategies.py and handouts.py
(next case, reserved per annotator), queue.py (the ranked annotation queue).
"""
