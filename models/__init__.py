"""Teacher and student architectures, the model registry, complexity profile, latency and pickle-free model files.

ONNX export is :mod:`models.export` (its functions need the optional ``deploy`` packages)."""
from models import resnet, shufflenet, wide_cnn  # noqa: F401  (registers the architectures)
from models.checkpoint import load_model, save_model
from models.external import (HeadMismatchError, WeightsUnavailableError, load_network, load_weights_into,
                             read_weights, start_network)
from models.latency import LatencyResult, measure_latency, time_callable
from models.portable import save_portable
from models.profile import Complexity, format_report, profile
from models.registry import create_model, list_models, register_model

__all__ = [
    "Complexity", "HeadMismatchError", "LatencyResult", "WeightsUnavailableError", "create_model", "format_report",
    "list_models", "load_model", "load_network", "load_weights_into", "measure_latency", "profile", "read_weights",
    "register_model", "save_model", "save_portable", "start_network", "time_callable",
]
