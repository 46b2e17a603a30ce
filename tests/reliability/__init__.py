"""Reliability suite: faults, bad input and load against real stores and servers."""
