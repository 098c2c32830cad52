"""Tests that run flows and tasks through a real Prefect API."""
