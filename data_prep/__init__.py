"""Shard building: Open Images + Localized Narratives -> WebDataset tar shards.

Installed as ``opt_scale.data_prep``; the ``opt-shards`` command lives in
:mod:`opt_scale.data_prep.cli`.
"""
