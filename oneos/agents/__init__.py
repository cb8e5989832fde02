"""Agents: ordinary programs run by a runtime as child processes."""
