"""Outbound side: the callback sender."""
