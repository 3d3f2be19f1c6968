"""Hospitals: heart disease diagnosed from a patient's record, learned across four hospitals that keep their tables."""
