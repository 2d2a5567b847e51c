"""Prompt engineering for devices: templates, sensor windows as text, demonstrations.

Submodules import numpy only; MiniLM loads lazily on the first text embedding.
"""
