"""Public datasets ``roofseg-data download NAME --to DIR`` can fetch (mlcore's downloader).

RID (Krapf et al., Remote Sensing 2022, 14(10):2299) is published on mediaTUM under
doi:10.14459/2022mp1655470; the raster data (tiles, superstructure / segment masks, annotation
experiment) is served by TUM's data server as one share, which its Nextcloud front end delivers
as a zip archive. mediaTUM publishes no checksum for that archive and the host cannot be reached
from the machines this project is built on, so neither a size nor a digest is pinned and the
extracted layout is not verified beyond a successful extraction: pin a sha256 here once a trusted
copy has been hashed. The vector labels (``segments_reviewed.csv`` etc.) are in RID's GitHub
repository (TUMFTM/RID, ``data/``), fetched as a second file.
"""

from __future__ import annotations

from mlcore.datacli import make_data_main
from mlcore.download import DatasetSpec, RemoteFile

RID = DatasetSpec(
    name="rid",
    description="RID: 1880 roof-centred aerial tiles (512 px) with superstructure/segment masks, "
                "annotation experiment and vector labels (mediaTUM 1655470, non-commercial use)",
    files=(
        RemoteFile(url="https://dataserv.ub.tum.de/s/m1655470/download", filename="m1655470.zip", size=None),
        RemoteFile(url="https://github.com/TUMFTM/RID/archive/refs/heads/main.zip", filename="RID-main.zip",
                   size=None),
    ),
)

REGISTRY: dict[str, DatasetSpec] = {RID.name: RID}

main = make_data_main(REGISTRY, prog="roofseg-data")
