"""Public datasets ``plantid-data download NAME --to DIR`` can fetch (mlcore's downloader).

PlantNet-300K (Garcin et al., "Pl@ntNet-300K: a plant image dataset with high label ambiguity and a
long-tailed distribution", NeurIPS 2021 Datasets and Benchmarks): 306,146 images of 1,081 species,
the authors' Zenodo archive (record 5645731, about 31 GB). It extracts to ``plantnet_300K/images/
{train,val,test}/SPECIES_ID/*.jpg`` + ``plantnet300K_species_id_2_name.json`` + ``plantnet300K_metadata.json``.

Zenodo publishes an MD5 per file on the record page, but that page cannot be reached from the
machines this package was built on, so no digest is pinned here: the download is verified by its
extracted layout only (as for hairseg's Figaro-1k). Pin ``md5=`` here once it has been read from Zenodo.
"""

from __future__ import annotations

from mlcore.datacli import make_data_main
from mlcore.download import DatasetSpec, RemoteFile

PLANTNET300K = DatasetSpec(
    name="plantnet300k",
    description="Pl@ntNet-300K: 306k photos of 1,081 plant species (train/val/test), ~31 GB, Zenodo 5645731",
    files=(
        RemoteFile(
            url="https://zenodo.org/records/5645731/files/plantnet_300K.zip?download=1",
            filename="plantnet_300K.zip",
            size=None,
        ),
    ),
    layout=("plantnet_300K/images/train", "plantnet_300K/images/val", "plantnet_300K/images/test",
            "plantnet_300K/plantnet300K_species_id_2_name.json"),
)

REGISTRY: dict[str, DatasetSpec] = {PLANTNET300K.name: PLANTNET300K}

main = make_data_main(REGISTRY, prog="plantid-data")
