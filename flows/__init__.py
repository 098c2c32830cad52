"""Prefect flows: the entrypoints named in prefect.yaml (``flows/assets.py``) and the pull step (``steps``).

``flowmas up``, which serves them, is a process supervisor rather than a flow: it lives in the ``up`` package.
Nothing is imported at package level, so importing a module here loads only what that module needs.
"""
