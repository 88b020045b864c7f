from __future__ import annotations

import pytest
import torch

from mlcore import TrainConfig, Trainer, make_loader
from mlcore.testing import Accuracy, NoisyBlobs, TinyCNN, classification_step


@pytest.fixture
def toy(tmp_path):
    """Factory for a trainer on the toy blob task: ``toy(**config_overrides) -> (trainer, train_loader, val_loader)``."""

    def make(n_train=40, n_val=16, model_seed=0, shuffle=True, num_workers=0, step=classification_step,
             dataset_kwargs=None, **overrides):
        defaults = dict(out=str(tmp_path / "run"), epochs=2, batch_size=4, accum_steps=1, lr=0.05,
                        num_workers=num_workers, clip_grad_norm=None, optimizer="sgd", momentum=0.0)
        cfg = TrainConfig(**{**defaults, **overrides})
        torch.manual_seed(model_seed)
        model = TinyCNN()
        trainer = Trainer(model, cfg, step, metrics=[Accuracy()])
        train = make_loader(NoisyBlobs(n_train, **(dataset_kwargs or {})), batch_size=cfg.batch_size,
                            shuffle=shuffle, seed=cfg.seed, num_workers=num_workers)
        val = make_loader(NoisyBlobs(n_val, augment=False, seed=1), batch_size=5, shuffle=False)
        return trainer, train, val

    return make


@pytest.fixture
def params_of():
    """``params_of(trainer) -> {name: tensor}`` copies of the model state."""
    return lambda trainer: {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
