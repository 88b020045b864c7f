"""The ``<domain>-data`` console script: ``download NAME --to DIR [--cache DIR]`` and ``list``.

A domain builds its entry point from its registry of :class:`~mlcore.download.DatasetSpec`::

    main = make_data_main({"figaro1k": FIGARO1K}, prog="hairseg-data")
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from mlcore.download import DatasetSpec, DownloadError, download_dataset


def make_data_main(registry: Mapping[str, DatasetSpec], prog: str) -> Callable[[list[str] | None], int]:
    """Return ``main(argv=None) -> int`` for a ``<domain>-data`` console script over ``registry``.

    ``download NAME --to DIR [--cache DIR]`` fetches dataset ``NAME`` into ``DIR`` (see
    :func:`mlcore.download.download_dataset`) and prints the dataset path; ``list`` prints one
    ``name  description`` line per dataset. Exit codes: 0 success, 1 download failure, 2 unknown
    dataset name or bad arguments; errors are one ``prog: error: ...`` line on stderr.
    """

    def main(argv: list[str] | None = None) -> int:
        from mlcore.cli import ArgumentParser  # one-line flag errors, exit 2 (subcommands too)

        parser = ArgumentParser(prog=prog, description="Download public datasets.")
        sub = parser.add_subparsers(dest="command", required=True)
        dl = sub.add_parser("download", help="download a dataset into its own layout")
        dl.add_argument("name", metavar="NAME", help="dataset name (see `list`)")
        dl.add_argument("--to", required=True, type=Path, metavar="DIR", help="target folder")
        dl.add_argument(
            "--cache",
            type=Path,
            metavar="DIR",
            help="download cache (default: $MLCORE_CACHE or ~/.cache/mlcore/downloads)",
        )
        sub.add_parser("list", help="list the datasets")
        args = parser.parse_args(argv)

        if args.command == "list":
            width = max((len(n) for n in registry), default=0)
            for name, spec in sorted(registry.items()):
                print(f"{name:<{width}}  {spec.description}")
            return 0
        spec = registry.get(args.name)
        if spec is None:
            known = ", ".join(sorted(registry)) or "none"
            print(f"{prog}: error: unknown dataset {args.name!r} (known: {known})", file=sys.stderr)
            return 2
        try:
            path = download_dataset(spec, args.to, cache_dir=args.cache)
        except (DownloadError, OSError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 1
        print(path)
        return 0

    return main
