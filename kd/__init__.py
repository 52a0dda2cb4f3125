"""Knowledge distillation: losses, the Trainer, callbacks, metrics logs and the in-memory data pipeline."""
from kd.callbacks import Callback, EarlyStopping, EpochPrinter, EstimatePrinter
from kd.ensemble import TeacherEnsemble, ensemble_members
from kd.features import HintLoss
from kd.hooks import FeatureHook
from kd.losses import (
    LOSSES, DistillationLoss, DistillLoss, TrainState, create_loss, register_loss, soft_target_kl, total_loss,
)
from kd.metrics import MetricsLogger, TensorBoardLogger, epoch_scalars
from kd.optim import make_optimizer, make_scheduler
from kd.trainer import EpochRecord, EvalResult, FitResult, Trainer, evaluate, fine_tuner, fit_model

__all__ = [
    "LOSSES", "Callback", "DistillLoss", "DistillationLoss", "EarlyStopping", "EpochPrinter", "EstimatePrinter", "EpochRecord",
    "EvalResult", "FeatureHook", "FitResult", "HintLoss", "MetricsLogger", "TensorBoardLogger", "TrainState",
    "TeacherEnsemble", "Trainer", "create_loss", "ensemble_members", "epoch_scalars", "evaluate", "fine_tuner",
    "fit_model", "make_optimizer", "make_scheduler", "register_loss", "soft_target_kl", "total_loss",
]
