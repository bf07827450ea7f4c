"""The common layer: atomic writes, input errors, hashing, safe archive extraction, provenance, upgrades.

Imports nothing else of the workflow; every other layer may import it.
"""
