"""Knowledge distillation: losses, the Trainer, callbacks, metrics logging and the in-memory data pipeline."""
from kd.callbacks import Callback, EarlyStopping, EpochPrinter
from kd.features import HintLoss
from kd.hooks import FeatureHook
from kd.losses import DistillationLoss, soft_target_kl
from kd.metrics import MetricsLogger, TensorBoardLogger, epoch_scalars
from kd.optim import make_optimizer, make_scheduler
from kd.trainer import EpochRecord, EvalResult, FitResult, Trainer, evaluate, fit_model

__all__ = [
    "Callback", "DistillationLoss", "EarlyStopping", "EpochPrinter", "EpochRecord", "EvalResult", "FeatureHook", "FitResult",
    "HintLoss", "MetricsLogger", "TensorBoardLogger", "Trainer", "epoch_scalars", "evaluate", "fit_model",
    "make_optimizer", "make_scheduler", "soft_target_kl",
]
