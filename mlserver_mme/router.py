"""``mlserver_mme.router.SageMakerRouter``, the name ``model-settings.json`` gives MLServer: the class lives
in ``front/sagemaker.py``."""

from .front.sagemaker import SageMakerRouter

__all__ = ["SageMakerRouter"]
