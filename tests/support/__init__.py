"""Helpers shared by the unit tests (``tests/unit``), the end-to-end tests (``tests/e2e``) and ``bench/``.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml; bench/harness adds it too),
so they are imported as ``from support.artifacts import booster``.
"""
