"""Bytewax dataflows of the appliance: sources, the main flow, and the store sink."""
