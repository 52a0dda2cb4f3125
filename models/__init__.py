"""Teacher and student architectures, the model registry, complexity profile and pickle-free model files."""
from models import resnet, shufflenet, wide_cnn  # noqa: F401  (registers the architectures)
from models.checkpoint import load_model, save_model
from models.profile import Complexity, format_report, profile
from models.registry import create_model, list_models, register_model

__all__ = [
    "Complexity", "create_model", "format_report", "list_models", "load_model", "profile", "register_model",
    "save_model",
]
