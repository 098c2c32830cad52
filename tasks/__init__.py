"""Prefect tasks: one ``@task`` per core operation, adding retries, caching, tags and artifacts.

Task parameters are plain data (names and paths); each task builds its core object inside and makes one call.
"""
