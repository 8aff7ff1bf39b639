"""The ``vmrs`` command: triage of Hyper-V files without Volatility.

Subcommands live one per module (``<name>_cmd.py``), each with ``add_parser(subparsers)``
and ``run(args) -> int``; :mod:`.main` lists them. Nothing here imports Volatility.
"""
