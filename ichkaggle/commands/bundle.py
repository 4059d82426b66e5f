"""Build the package and its configs as the Kaggle dataset folder datasets/ichkaggle-src/.

Writes a wheel of the package (pure Python, built reproducibly: same source -> same bytes),
the experiment TOMLs (the bundled ones and any --config), SHA256SUMS and
dataset-metadata.json with the owner's slug (the Kaggle username from the credentials, or
--owner). Only allow-listed files go in (the package's .py files and its configs), and the
build is refused, naming the file, if anything looks like a credential: kaggle.json, .env,
the Kaggle key in use, a "key": "<32 hex>" entry. Kernels install the wheel offline with
pip install --no-index --no-deps. Next: ichkaggle push dataset ichkaggle-src.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="the dataset folder; None: datasets/ichkaggle-src of the checkout")
    parser.add_argument("--owner", default=None,
                        help="Kaggle username for dataset-metadata.json; None: the credentials' username")
    parser.add_argument("--config", action="append", default=[], metavar="TOML",
                        help="an extra experiment TOML to ship next to the bundled ones (repeatable)")
    parser.add_argument("--source", default=None, metavar="DIR",
                        help="the checkout to bundle; None: the one holding the cwd, else the package's")


def main(args: argparse.Namespace) -> int:
    from ..kaggle.bundle import build_bundle
    from ..kaggle.credentials import find_credentials

    owner = args.owner
    if not owner:
        credentials = find_credentials(required=False)
        owner = credentials.username if credentials else None
    result = build_bundle(args.out, owner, args.source, tuple(args.config))
    print(result.describe())
    print(f"owner {owner}; next: ichkaggle push dataset {result.out.name}"
          + (f" --datasets-dir {result.out.parent}" if args.out else ""))
    return 0
