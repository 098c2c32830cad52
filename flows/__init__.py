"""Prefect flows: the entrypoints named in prefect.yaml (``flows/assets.py``) and ``flowmas up`` (``serve``).

Nothing is imported at package level, so importing ``flows.serve`` (for a CLI's ``--help``) does not load
Prefect; ``run_up`` loads it when it starts.
"""
