"""Adapters: each department format meets the canonical model here.

One sub-package per format, each with a sans-IO codec (bytes to canonical envelopes and back) and
an ``ADAPTER`` object (its manifest and codec factory) registered as a ``yiwang.adapters`` entry
point. ``adapters.runner`` connects codecs to sources, sinks and the gateway.
"""
