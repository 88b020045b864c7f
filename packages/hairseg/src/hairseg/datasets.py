"""Public datasets ``hairseg-data download NAME --to DIR`` can fetch (mlcore's downloader)."""

from __future__ import annotations

from mlcore.datacli import make_data_main
from mlcore.download import DatasetSpec, RemoteFile

# Figaro-1k (Svanera et al., "Figaro, hair detection and segmentation in the wild", ICIP 2016),
# the authors' archive. No checksum is published for it and the host is not reachable from the
# machines this project is built on, so only the extracted layout is verified; pin a sha256 here
# once a trusted copy has been hashed.
FIGARO1K = DatasetSpec(
    name="figaro1k",
    description="Figaro-1k: 1050 hair photos with binary masks (840 Training, 210 Testing)",
    files=(
        RemoteFile(
            url="http://projects.i-ctm.eu/sites/default/files/AltroMateriale/207_Michele%20Svanera/Figaro1k.zip",
            filename="Figaro1k.zip",
            size=None,
        ),
    ),
    layout=("Figaro1k/Original/Training", "Figaro1k/Original/Testing", "Figaro1k/GT/Training", "Figaro1k/GT/Testing"),
)

REGISTRY: dict[str, DatasetSpec] = {FIGARO1K.name: FIGARO1K}

main = make_data_main(REGISTRY, prog="hairseg-data")
