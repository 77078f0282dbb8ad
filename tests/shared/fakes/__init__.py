"""Test doubles that stand in for a framework (no torch, no MXNet needed)."""
