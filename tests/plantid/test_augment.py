from __future__ import annotations

import torch

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD
from plantid.augment import DeviceAugmentation, DeviceNormalize
from plantid.train import make_step

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_normalize_closed_form():
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    torch.testing.assert_close(DeviceNormalize()(x), (x.float() / 255 - MEAN) / STD)


def test_augmentation_output_and_identity_on_constant_images():
    # constant images stay constant under crops/flips when rotation, jitter and blur are off
    x = torch.zeros(4, 3, 20, 30, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 200, 100, 50
    aug = DeviceAugmentation(16, scale_min=0.5, rotation=0.0, jitter=0.0, blur_p=0.0)
    out = aug(x)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    expected = (x[:, :, :1, :1].float() / 255 - MEAN) / STD
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-4, rtol=0)


def test_augmentation_is_random_per_sample_and_seeded():
    x = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8).repeat(6, 1, 1, 1)
    aug = DeviceAugmentation(24)
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    b = aug(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])  # different parameters per sample


def test_step_augments_only_in_training():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    batch = {"image": x, "label": torch.tensor([0, 1, 2, 3, 0])}
    step = make_step(0.0, DeviceAugmentation(8))
    model.eval()
    out = step(model, batch)
    torch.testing.assert_close(out["logits"], model(DeviceNormalize()(x)))
    ref_loss = torch.nn.functional.cross_entropy(out["logits"], batch["label"])
    torch.testing.assert_close(out["loss"], ref_loss)
    model.train()
    assert not torch.allclose(step(model, batch)["logits"], out["logits"])
    # float batches (--no-gpu-aug) are used as they are
    xf = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(step(model, {"image": xf, "label": batch["label"]})["logits"], model(xf))
