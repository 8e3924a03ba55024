"""The configuration: its schema checks, the probe sets, the lens settings."""
