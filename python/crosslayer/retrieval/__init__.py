"""Retrieval with cross-layer codes: metrics, the SPoC baseline, float cross-layer scoring, the on-disk index and
its search, contact sheets, and the evaluation of the paper's retrieval experiment (Sections 3.5 and 4.4)."""
