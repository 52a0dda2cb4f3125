import pytest
import torch

from kd import Callback, DistillationLoss, EarlyStopping, HintLoss, Trainer
from kd.data import make_loaders
from kd.trainer import collapse_reason
from models import create_model
from models.common import batch_count


def _student(seed=1):
    torch.manual_seed(seed)
    return create_model("wide_cnn", 10, widths=(8, 16), hidden=32, dropout=0.3)


def _teacher():
    torch.manual_seed(2)
    return create_model("wide_cnn", 10, widths=(16, 16), hidden=32, dropout=0.3)


class StopAfter(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, trainer, record):
        trainer.should_stop = record.epoch >= self.epochs


def test_supervised_training_learns_synthetic_data(synthetic):
    train, test = make_loaders(synthetic, 32)
    torch.manual_seed(1)
    model = create_model("wide_cnn", 10, widths=(8, 16), hidden=64, dropout=0.0)
    before = Trainer(model, progress=False).evaluate(test).accuracy
    result = Trainer(model, epochs=4, progress=False).fit(train, test)
    assert len(result.history) == 4
    assert result.last_accuracy > 60 > before + 20  # chance is 10 %
    assert result.best_accuracy == max(r.val_accuracy for r in result.history)


def test_teacher_is_frozen_and_stays_in_eval(tiny):
    train, test = make_loaders(tiny, 32)
    teacher = _teacher().train()  # handed over in train mode on purpose
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen_modes = []

    class FrozenSpy(Callback):
        def on_step_end(self, trainer, step, loss):
            seen_modes.append((trainer.student.training, trainer.teacher.training))
            assert not any(p.requires_grad for p in trainer.teacher.parameters())

    trainer = Trainer(_student(), teacher, epochs=2, progress=False, callbacks=[FrozenSpy()])
    trainer.fit(train, test)
    assert seen_modes and all(s and not t for s, t in seen_modes)  # student trains, teacher never does
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # incl. BN running stats
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's flags are given back after fit
    assert not any(p is q for p in teacher.parameters() for g in trainer.optimizer.param_groups for q in g["params"])
    assert isinstance(trainer.loss, DistillationLoss) and trainer.loss.alpha == 0.9


def test_gradients_reach_the_student(tiny):
    train, _ = make_loaders(tiny, 32)
    student = _student()
    before = [p.clone() for p in student.parameters()]
    Trainer(student, _teacher(), epochs=1, progress=False).fit(train)
    assert all(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def _fit(tmp, tiny, stop_after=None, resume=False, feature=False):
    train, test = make_loaders(tiny, 32, seed=7)
    student, teacher = _student(seed=11 if resume else 1), _teacher()
    hint = HintLoss(student, teacher, "features.conv2", "features.conv2") if feature else None
    callbacks = [StopAfter(stop_after)] if stop_after else []
    trainer = Trainer(student, teacher, DistillationLoss(4.0, 0.7), epochs=3, out_dir=tmp, progress=False,
                      callbacks=callbacks, feature_loss=hint)
    result = trainer.fit(train, test, resume=resume)
    return student, result


@pytest.mark.parametrize("feature", [False, True])
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, tiny, feature):
    full, full_result = _fit(tmp_path / "full", tiny, feature=feature)
    torch.manual_seed(123)  # whatever happens between the two processes
    _fit(tmp_path / "cut", tiny, stop_after=1, feature=feature)  # "crashes" after epoch 1
    torch.manual_seed(456)
    resumed, resumed_result = _fit(tmp_path / "cut", tiny, resume=True, feature=feature)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r.val_accuracy for r in resumed_result.history] == [r.val_accuracy for r in full_result.history]


def test_checkpoints_load_with_weights_only(tmp_path, tiny):
    train, test = make_loaders(tiny, 32)
    trainer = Trainer(_student(), epochs=2, out_dir=tmp_path, progress=False)
    result = trainer.fit(train, test)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == result.best_epoch
    assert best["accuracy"] == result.best_accuracy
    trainer.load_best()
    assert trainer.evaluate(test).accuracy == pytest.approx(result.best_accuracy)


def test_early_stopping_and_callbacks(tiny):
    train, test = make_loaders(tiny, 32)
    steps = []

    class Count(Callback):
        def on_step_end(self, trainer, step, loss):
            steps.append(loss)

    result = Trainer(_student(), epochs=5, progress=False, callbacks=[Count(), StopAfter(2)]).fit(train, test)
    assert len(result.history) == 2 and len(steps) == 2 * len(train)
    stopper = EarlyStopping(patience=1)
    trainer = Trainer(_student(), epochs=9, progress=False, callbacks=[stopper])
    trainer.optimizer.param_groups[0]["lr"] = 0.0  # nothing improves, so it stops after 1 + patience epochs
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 0.0)
    assert len(trainer.fit(train, test).history) == 2


def test_bad_trainer_arguments(tmp_path, tiny):
    with pytest.raises(ValueError, match="epochs"):
        Trainer(_student(), epochs=0)
    with pytest.raises(ValueError, match="teacher"):
        Trainer(_student(), feature_loss=torch.nn.Identity())
    train, _ = make_loaders(tiny, 32)
    with pytest.raises(FileNotFoundError, match="resume"):
        Trainer(_student(), out_dir=tmp_path, progress=False).fit(train, resume=True)


def test_evaluate_restores_train_mode(tiny):
    _, test = make_loaders(tiny, 32)
    model = _student().train()
    Trainer(model, progress=False).evaluate(test)
    assert model.training


def test_bf16_autocast_trains(tiny):
    train, test = make_loaders(tiny, 32)
    result = Trainer(_student(), _teacher(), epochs=1, progress=False, precision="bf16").fit(train, test)
    assert torch.isfinite(torch.tensor(result.history[0].train_loss))


def test_batch_count_is_none_for_a_wrapper_over_batches_without_a_length():
    class Wrapper:  # as kd.mixup.MixedBatches: its __len__ asks the batches it wraps
        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __iter__(self):
            return iter(self.base)

    endless = (b for b in [])  # a generator has no length
    assert batch_count([1, 2, 3]) == 3 and batch_count(Wrapper([1, 2])) == 2
    assert batch_count(endless) is None and batch_count(Wrapper(endless)) is None


@pytest.mark.parametrize("accuracies, classes, expected", [
    ([30.0, 40.0, 10.5, 11.0], 10, "fell from 40.00 % (epoch 2) to chance (10.50 and 11.00 % in epochs 3 and 4"),
    ([30.0, 40.0, 10.5, 12.5], 10, None),  # 12.5 is more than 2 points above chance
    ([11.0, 10.0, 10.0, 9.0], 10, None),  # never learned: slow, not collapsed
    ([40.0, 10.0], 10, None),  # one epoch at chance is not two after a peak
    ([25.0, 2.5, 3.0], 100, "to chance (2.50 and 3.00 % in epochs 2 and 3; chance is 1.00 %)"),
    ([20.9, 2.5, 3.0], 100, None),  # the peak was not 20 points above chance
])
def test_collapse_is_two_epochs_at_chance_after_a_peak(accuracies, classes, expected):
    reason = collapse_reason(accuracies, classes)
    assert (reason is None) if expected is None else (expected in reason)
