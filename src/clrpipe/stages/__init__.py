"""Thin stage entry points: read config, call the pure core, write outputs, log."""
