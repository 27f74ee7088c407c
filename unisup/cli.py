"""``unisup <stage> ...``: one subcommand per pipeline stage, each runnable alone on files or URIs.

Every subcommand takes ``--config`` (a profile name or a YAML file) and any number of
``-o section.key=value`` overrides. Bad input ends with a one-line error naming the
file, column and rows, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from unisup.config import ConfigError, describe, load_config, to_dict
from unisup.schemas import ARTIFACTS, DataValidationError

Handler = Callable[[argparse.Namespace], int | None]


def _config(args: argparse.Namespace):
    return load_config(args.config, args.override)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default="local", help="profile (local, cluster) or YAML file [local]")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key (repeatable)"
    )


# ---------------------------------------------------------------- config


def _config_show(args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(to_dict(_config(args)), sort_keys=False), end="")


def _config_keys(args: argparse.Namespace) -> None:
    for key, default, help_text in describe():
        print(f"{key:36} {default:40} {help_text}")


# ---------------------------------------------------------------- data


def _data_split(args: argparse.Namespace) -> None:
    from unisup.data.sample import load_judgments, load_catalog, make_split, write_split

    cfg = _config(args).data
    catalog = load_catalog(cfg.catalog_uri).accepted
    judgments = load_judgments(cfg.judgments_uri, catalog, cfg.num_grades).accepted
    split = make_split(judgments["query"].to_pylist(), cfg.split_seed, cfg.split_fractions)
    out = args.out or cfg.split_uri
    write_split(split, out, cfg.split_seed, cfg.split_fractions)
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} queries" for k, v in split.items()))


def _data_validate(args: argparse.Namespace) -> int:
    from unisup.data.sample import load_catalog
    from unisup.data.tables import read_artifact, write_table
    from unisup.schemas import RuleContext

    cfg = _config(args).data
    known = None
    if args.artifact in ("judgments", "raw_logs", "labels"):
        known = frozenset(load_catalog(cfg.catalog_uri).accepted["product_id"].to_pylist())
    context = RuleContext(num_grades=cfg.num_grades, known_items=known)
    result = read_artifact(args.uri, args.artifact, context, strict=not args.quarantine)
    print(
        f"{args.artifact} ({args.uri}): rows in {result.rows_in} = accepted {result.accepted.num_rows}"
        f" + quarantined {result.quarantined.num_rows}"
    )
    for reason, count in result.reason_counts().items():
        print(f"  quarantined {count:>8}  {reason}")
    if args.quarantine and result.quarantined.num_rows:
        write_table(result.quarantined, args.quarantine)
        print(f"quarantine written to {args.quarantine}")
    return 0


def _data_download(args: argparse.Namespace) -> None:
    from unisup.data.download import download

    for path in download(args.dataset, args.dest):
        print(path)


def _data_import(args: argparse.Namespace) -> None:
    from unisup import storage
    from unisup.data.public import load_esci, load_wands
    from unisup.data.tables import write_table

    num_grades = _config(args).data.num_grades
    if args.dataset == "wands":
        catalog, judgments = load_wands(args.source, num_grades)
    else:
        catalog, judgments = load_esci(args.source, locale=args.locale, num_grades=num_grades)
    write_table(catalog, storage.join(args.out, "products.parquet"))
    write_table(judgments, storage.join(args.out, "judgments.parquet"))
    print(f"{args.dataset}: {catalog.num_rows} products, {judgments.num_rows} judgments -> {args.out}")


# ---------------------------------------------------------------- channels


def _channels(args: argparse.Namespace) -> None:
    from unisup.baselines import build_channels, evaluate_channels, format_table
    from unisup.data.sample import load_dataset

    cfg = _config(args)
    dataset = load_dataset(cfg.data)
    qrels = dataset.qrels(args.split)
    channels = build_channels(dataset, cfg.channels)
    results = evaluate_channels(channels, qrels, k=args.k, depth=cfg.channels.top_k, relevance_threshold=cfg.data.relevance_threshold)
    k = args.k
    print(f"\n{len(qrels)} {args.split} queries, {dataset.catalog.num_rows} products, retrieval over the full catalog")
    print(format_table(results, [f"ndcg@{k}", f"condensed_ndcg@{k}", f"judged@{k}", f"grade0_share@{k}"]))
    if args.json:
        payload = {r.name: {"metrics": r.metrics, "search_seconds": r.search_seconds} for r in results}
        from unisup import storage

        storage.write_text(args.json, json.dumps(payload, indent=1))


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unisup",
        description="Unified supervision for first-stage sponsored-search retrieval. One subcommand per stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = sub.add_parser("config", help="show the configuration or list its keys")
    config_sub = config.add_subparsers(dest="action", required=True)
    p = config_sub.add_parser("show", help="print the resolved configuration as YAML")
    _common(p)
    p.set_defaults(handler=_config_show)
    p = config_sub.add_parser("keys", help="list every key with its default and help")
    p.set_defaults(handler=_config_keys)

    data = sub.add_parser("data", help="dataset utilities: split, validate, download, import, simulate-logs")
    data_sub = data.add_subparsers(dest="action", required=True)
    p = data_sub.add_parser("split", help="make the seeded train/validation/test split of the judged queries")
    _common(p)
    p.add_argument("--out", help="where to write the split JSON [data.split_uri]")
    p.set_defaults(handler=_data_split)
    p = data_sub.add_parser("validate", help="validate a file against an artifact schema")
    _common(p)
    p.add_argument("artifact", choices=sorted(ARTIFACTS))
    p.add_argument("uri", help="Parquet or CSV file, local or gs://")
    p.add_argument("--quarantine", help="quarantine bad rows to this Parquet file instead of failing")
    p.set_defaults(handler=_data_validate)
    p = data_sub.add_parser("download", help="download WANDS or ESCI (needs internet; not run in tests)")
    p.add_argument("dataset", choices=["wands", "esci"])
    p.add_argument("--dest", default="data/external", help="target folder [data/external/]")
    p.set_defaults(handler=_data_download)
    p = data_sub.add_parser("import", help="map a WANDS or ESCI folder into catalog + judgments Parquet")
    _common(p)
    p.add_argument("dataset", choices=["wands", "esci"])
    p.add_argument("source", help="folder with the dataset's files")
    p.add_argument("--out", required=True, help="output folder (local or gs://)")
    p.add_argument("--locale", default="us", help="ESCI product locale [us]")
    p.set_defaults(handler=_data_import)

    p = sub.add_parser("channels", help="evaluate the retrieval channels (BM25, MiniLM, RRF) on judged queries")
    _common(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("-k", type=int, default=10, help="cutoff of the metrics [10]")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.set_defaults(handler=_channels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (DataValidationError, ConfigError, FileNotFoundError) as err:
        print(f"unisup: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
