"""Volatility 3 plugins of the volatility3-vmrs pack.

Installed as ``volatility3.plugins.vmrs`` (see pyproject.toml), so the stock ``vol``
imports them and lists them as ``vmrs.<module>.<Class>``. Importing any of them imports
the .vmrs layer and its stacker. Modules here must be import-safe: only ImportError may
escape at import time.
"""
