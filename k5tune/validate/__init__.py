"""Validation videos: generated through the diffusers pipeline, written as mp4."""
