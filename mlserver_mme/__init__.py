"""SageMaker multi-model endpoints for MLServer."""

__version__ = "0.1.0"
