"""Download public datasets for users with internet access (never run in tests)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from unisup.errors import InputError

SOURCES = {
    "wands": [
        f"https://raw.githubusercontent.com/wayfair/WANDS/main/dataset/{name}"
        for name in ("product.csv", "query.csv", "label.csv")
    ],
    "esci": [
        f"https://github.com/amazon-science/esci-data/raw/main/shopping_queries_dataset/{name}"
        for name in ("shopping_queries_dataset_examples.parquet", "shopping_queries_dataset_products.parquet")
    ],
}


def download(dataset: str, dest: str | Path) -> list[Path]:
    """Fetch the files of ``wands`` or ``esci`` into ``dest``; existing files are kept."""
    if dataset not in SOURCES:
        raise InputError(f"unknown dataset {dataset!r}; choose from {', '.join(SOURCES)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for url in SOURCES[dataset]:
        target = dest / url.rsplit("/", 1)[-1]
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".part")
            with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                with tqdm(total=total or None, unit="B", unit_scale=True, desc=target.name) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
            tmp.replace(target)
        paths.append(target)
    return paths
