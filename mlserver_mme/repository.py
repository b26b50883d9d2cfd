"""``mlserver_mme.repository.MMERepository``, the name ``settings.json`` gives MLServer: the class lives in
``artifacts/repository.py``."""

from .artifacts.repository import MMERepository

__all__ = ["MMERepository"]
