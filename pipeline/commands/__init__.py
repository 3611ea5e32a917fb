"""CLI commands, one module each.

Every module here defines ``NAME`` (the sub-command), ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. :mod:`pipeline.cli` discovers them, so adding a command never touches the
dispatcher. Modules import heavy libraries inside ``run`` so that ``--help`` stays fast.
"""
