"""Stages fetch, benchmark, seed and general: pinned raw data and model, held-out test sets, seeds, general SFT data."""
