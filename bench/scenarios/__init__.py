"""The scenarios of ``python -m bench``: each module has a docstring, ``add_arguments(parser)`` and
``run(args) -> dict`` (the figures, JSON-able); it prints its Markdown as it goes."""
