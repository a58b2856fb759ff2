"""Decode and inference Ray actors (issue: video pipeline)."""
