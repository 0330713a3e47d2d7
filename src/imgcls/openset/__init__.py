"""Answers that know their limits: an out-of-distribution score that says "none of these" (scores.py,
fitted by fit.py) and conformal prediction sets that keep a promised error rate (conformal.py)."""
