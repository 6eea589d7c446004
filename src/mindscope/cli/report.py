"""Placeholder until this concern lands."""
commands: list = []
