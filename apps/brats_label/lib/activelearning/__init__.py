"""Active-learning strategies and scoring.

Until uncertainty scoring lands, the app serves MONAI Label's stock ``random`` strategy (see main.py).
"""
