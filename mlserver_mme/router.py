"""``mlserver_mme.router.SageMakerRouter``, the name ``model-settings.json`` gives MLServer: the class lives
in ``front/wiring.py``."""

from .front.wiring import SageMakerRouter

__all__ = ["SageMakerRouter"]
