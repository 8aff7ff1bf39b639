"""Fuzzing harness for the saved-state reader (see fuzz/README.md).

Targets live in :mod:`fuzz.targets` (one small function each, in a registry), seeds are
built from the test writers and the real samples by :mod:`fuzz.seeds`, and
:mod:`fuzz.runner` drives them with a mutation engine (or atheris, when installed).
"""
