"""Helpers of the experiment scripts (not part of the jaxface package)."""
