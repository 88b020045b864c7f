"""Public datasets ``foodrec-data download NAME --to DIR`` can fetch (mlcore's downloader)."""

from __future__ import annotations

from mlcore.datacli import make_data_main
from mlcore.download import DatasetSpec, RemoteFile

# Food-101 (Bossard et al., ECCV 2014), the authors' archive; the MD5 is the one torchvision's
# Food101 dataset verifies (torchvision/datasets/food101.py).
FOOD101 = DatasetSpec(
    name="food101",
    description="Food-101: 101 dishes x 1000 photos (750 train / 250 test each), 5 GB",
    files=(
        RemoteFile(
            url="http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
            filename="food-101.tar.gz",
            size=None,
            md5="85eeb15f3717b99a5da872d97d918f87",
        ),
    ),
    layout=("food-101/images", "food-101/meta/classes.txt", "food-101/meta/labels.txt",
            "food-101/meta/train.txt", "food-101/meta/test.txt"),
)

REGISTRY: dict[str, DatasetSpec] = {FOOD101.name: FOOD101}

main = make_data_main(REGISTRY, prog="foodrec-data")
