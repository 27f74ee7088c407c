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

from unisup.config import describe, load_config, to_dict
from unisup.errors import UnisupError
from unisup.schemas import ARTIFACTS


def _config(args: argparse.Namespace):
    return load_config(args.config, args.override)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default="local", help="profile (local, cluster) or YAML file [local]")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key (repeatable)",
    )


# ---------------------------------------------------------------- config


def _config_show(args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(to_dict(_config(args)), sort_keys=False), end="")


def _config_keys(args: argparse.Namespace) -> None:
    for key, default, help_text in describe():
        print(f"{key:36} {default:40} {help_text}")


def add_config_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup config show | keys``."""
    config = subparsers.add_parser("config", help="show the configuration or list its keys")
    config_sub = config.add_subparsers(dest="action", required=True)
    p = config_sub.add_parser("show", help="print the resolved configuration as YAML")
    _common(p)
    p.set_defaults(handler=_config_show)
    p = config_sub.add_parser("keys", help="list every key with its default and help")
    p.set_defaults(handler=_config_keys)


# ---------------------------------------------------------------- data


def _data_split(args: argparse.Namespace) -> None:
    from unisup.data.dataset import load_catalog, load_judgments, make_split, write_split

    cfg = _config(args).data
    catalog = load_catalog(cfg.catalog_uri).accepted
    judgments = load_judgments(cfg.judgments_uri, catalog, cfg.num_grades).accepted
    split = make_split(judgments["query"].to_pylist(), cfg.split_seed, cfg.split_fractions)
    out = args.out or cfg.split_uri
    write_split(split, out, cfg.split_seed, cfg.split_fractions)
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} queries" for k, v in split.items()))


def _data_validate(args: argparse.Namespace) -> int:
    from unisup.data.dataset import load_catalog
    from unisup.data.tables import read_artifact, write_table
    from unisup.schemas import RuleContext

    cfg = _config(args).data
    known = None
    if args.artifact in ("judgments", "raw_logs", "labels", "engagement"):
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


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup data split | validate | download | import | simulate-logs``."""
    data = subparsers.add_parser("data", help="dataset utilities: split, validate, download, import, simulate-logs")
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
    p = data_sub.add_parser(
        "simulate-logs",
        help="SIMULATOR: write synthetic sponsored-search logs "
        "(queries, 3 retrieval channels, ad auction, users, bots)",
        description="Simulate sponsored-search request logs over the catalog: query stream (training queries "
        "of the split and catalog-derived queries; never validation/test queries), BM25 + dense + attribute "
        "retrieval, an ad auction with budgets and pacing, position-biased clicks driven by relevance and "
        "non-relevance factors, conversions, bots and malformed rows. Writes date-partitioned Parquet and "
        "_simulation.json (parameters + bias report). Resumable.",
    )
    _common(p)
    p.add_argument("--out", help="output folder or gs:// prefix [simulator.out_uri]")
    p.set_defaults(handler=_data_simulate_logs)


# ---------------------------------------------------------------- channels


def _channels(args: argparse.Namespace) -> None:
    from unisup.baselines import build_channels, evaluate_channels, format_table
    from unisup.data.dataset import load_dataset

    cfg = _config(args)
    dataset = load_dataset(cfg.data)
    qrels = dataset.qrels(args.split)
    channels = build_channels(dataset, cfg.channels)
    results = evaluate_channels(
        channels, qrels, k=args.k, depth=cfg.channels.top_k, relevance_threshold=cfg.data.relevance_threshold
    )
    k = args.k
    print(f"\n{len(qrels)} {args.split} queries, {dataset.catalog.num_rows} products, retrieval over the full catalog")
    print(format_table(results, [f"ndcg@{k}", f"condensed_ndcg@{k}", f"judged@{k}", f"grade0_share@{k}"]))
    if args.json:
        payload = {r.name: {"metrics": r.metrics, "search_seconds": r.search_seconds} for r in results}
        from unisup import storage

        storage.write_text(args.json, json.dumps(payload, indent=1))


def add_channels_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup channels``."""
    p = subparsers.add_parser("channels", help="evaluate the retrieval channels (BM25, MiniLM, RRF) on judged queries")
    _common(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("-k", type=int, default=10, help="cutoff of the metrics [10]")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.set_defaults(handler=_channels)


# ---------------------------------------------------------------- logs


def _data_simulate_logs(args: argparse.Namespace) -> None:
    from unisup.simulator import simulate_configured_logs

    summary = simulate_configured_logs(_config(args), args.out, progress=True)
    print(f"simulated {summary['requests']} requests, {summary['rows']} rows -> {summary['logs_uri']}")
    print(json.dumps({k: summary[k] for k in ("impressions", "clicks", "conversions", "malformed", "bias")}, indent=1))


def _extract_logs(args: argparse.Namespace) -> None:
    from unisup.logs import extract_logs_with_holdout

    cfg = _config(args)
    out = args.out or cfg.extraction.out_uri
    stem = out.removesuffix(".parquet")
    common = {
        "quarantine_uri": args.quarantine,
        "report_uri": args.report,
        "start_date": args.start,
        "end_date": args.end,
    }
    inputs = (args.logs or cfg.extraction.logs_uri, out, args.holdout_out or f"{stem}.holdout.parquet", cfg.extraction)
    report, held_out = extract_logs_with_holdout(*inputs, cfg.data.catalog_uri, **common)
    print(
        f"rows in {report['rows_in']} = accepted {report['rows_accepted']} + quarantined {report['rows_quarantined']}; "
        f"bot filtered {report['rows_bot_filtered']} ({report['bot_users']} users); "
        f"{report['pairs']} (query, item) pairs"
        f" -> {report['engagement_uri']} in {report['seconds']} s"
    )
    for reason, count in report["quarantined_by_reason"].items():
        print(f"  quarantined {count:>8}  {reason}")
    if held_out:
        first, last = held_out["window"]
        print(f"held out {first} .. {last}: {held_out['pairs']} (query, item) pairs -> {held_out['engagement_uri']}")


def add_extract_logs_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup extract-logs``."""
    p = subparsers.add_parser(
        "extract-logs",
        help="validate raw logs (quarantine), filter bots, aggregate per (query, item) engagement",
        description="Read date-partitioned raw logs (local or gs://) for a window with DuckDB, quarantine rows "
        "that break the raw_logs rules, drop bot users, estimate position propensities and write the engagement "
        "table.",
    )
    _common(p)
    p.add_argument("--logs", help="raw logs folder or gs:// prefix [extraction.logs_uri]")
    p.add_argument("--out", help="engagement Parquet [extraction.out_uri]")
    p.add_argument("--quarantine", help="quarantine Parquet [beside --out]")
    p.add_argument("--report", help="JSON report [beside --out]")
    p.add_argument("--start", help="first day YYYY-MM-DD [extraction.start_date, else first partition]")
    p.add_argument("--end", help="last day YYYY-MM-DD, inclusive [extraction.end_date, else last partition]")
    p.add_argument(
        "--holdout-out",
        help="engagement of the window's last extraction.holdout_days days, for evaluation [beside --out]",
    )
    p.set_defaults(handler=_extract_logs)


# ---------------------------------------------------------------- fusion and training


def _fuse(args: argparse.Namespace) -> None:
    from unisup.fusion import fuse

    cfg = _config(args)
    report = fuse(args.labels, args.engagement, args.out, args.report, cfg, quarantine_uri=args.quarantine)
    print(
        f"{report['preset']}: {report['lists']} lists, {report['rows']} items -> {args.out}; "
        f"per source {report['items_per_source']}; skipped {report['skipped_lists'] or 'none'}"
    )
    for name, counts in report["inputs"].items():
        print(
            f"  {name}: rows in {counts['rows_in']} = accepted {counts['accepted']}"
            f" + quarantined {counts['quarantined']}"
        )
    print(f"quarantine -> {report['quarantine_uri']}")


def add_fuse_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup fuse``."""
    p = subparsers.add_parser("fuse", help="multichannel prior + fused targets -> per-query training lists")
    _common(p)
    p.add_argument("--labels", required=True, help="teacher labels (labels schema), Parquet or CSV, local or gs://")
    p.add_argument("--engagement", required=True, help="engagement table (engagement schema)")
    p.add_argument("--out", required=True, help="training lists Parquet")
    p.add_argument("--report", help="JSON report (lists, items per source, target stats, parameters)")
    p.add_argument("--quarantine", help="Parquet of the rejected label and engagement rows [beside --out]")
    p.set_defaults(handler=_fuse)


def _train(args: argparse.Namespace) -> None:
    from unisup.biencoder.train import train

    cfg = _config(args)
    result = train(
        args.lists,
        args.out,
        cfg,
        triton_repository=args.triton_repository,
        work_dir=args.work_dir,
        resume=not args.no_resume,
    )
    start = "" if result.start_metric is None else f" (start {result.start_metric:.4f})"
    print(
        f"{result.steps} steps, {result.epochs} epochs{' (stopped early)' if result.stopped_early else ''}; "
        "best validation "
        f"nDCG@{cfg.training.validation_k} {result.best_metric:.4f} at step {result.best_step}{start}"
        f"{', BELOW THE START' if result.below_start else ''}; "
        f"{result.lists_per_second:.2f} lists/s, {result.items_per_second:.1f} items/s -> {result.model_dir}"
        + (f"; Triton model {result.triton_model}" if result.triton_model else "")
    )
    if args.json:
        from unisup import storage

        storage.write_text(args.json, json.dumps(result.to_dict(), indent=1))


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup train``."""
    p = subparsers.add_parser(
        "train", help="train the bi-encoder on training lists; export both towers and the Triton query encoder"
    )
    _common(p)
    p.add_argument("--lists", required=True, help="training lists Parquet (from `unisup fuse`)")
    p.add_argument("--out", required=True, help="bi-encoder folder (local or gs://)")
    p.add_argument("--triton-repository", help="also export the query tower into this Triton model repository")
    p.add_argument("--work-dir", help="checkpoints folder [<out>.work beside --out]")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--json", help="write the training result (history, throughput) as JSON here")
    p.set_defaults(handler=_train)


# ---------------------------------------------------------------- index, evaluation, promotion


def _build_index(args: argparse.Namespace) -> None:
    from unisup.index import build_catalog_index

    meta = build_catalog_index(args.model, args.out, _config(args)).metadata
    print(
        f"{meta['factory']} ({meta['metric']}, dim {meta['dimension']}): {meta['num_items']} items, built in "
        f"{meta['build_seconds']:.2f} s (embedding {meta['embed_seconds']:.1f} s); recall@10 {meta['recall@10']:.4f}, "
        f"recall@100 {meta['recall@100']:.4f} vs exact search on {meta['recall_queries']} -> {args.out}"
    )


def add_build_index_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup build-index``."""
    p = subparsers.add_parser("build-index", help="embed the catalog with the item tower and build the FAISS index")
    _common(p)
    p.add_argument("--model", required=True, help="bi-encoder folder (local or gs://)")
    p.add_argument("--out", required=True, help="index folder (local or gs://)")
    p.set_defaults(handler=_build_index)


def _parse_baseline(text: str) -> tuple[str, str, str]:
    name, _, paths = text.partition("=")
    model, _, index = paths.partition(",")
    if not (name and model and index):
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL,INDEX, got {text!r}")
    return name, model, index


def _evaluate(args: argparse.Namespace) -> int:
    from unisup.evaluation import run_evaluation

    cfg = _config(args)
    result = run_evaluation(
        cfg,
        args.model,
        args.index,
        args.out,
        args.baseline,
        args.judgments,
        args.split,
        args.engagement,
        args.teacher_audit,
        provenance={"config": args.config, "overrides": args.override},
    )
    k = cfg.evaluation.cutoffs[0]
    for system in result.systems:
        row = result.value(f"ndcg@{k}", system)
        low, high = (float("nan") if x is None else x for x in (row["ci_low"], row["ci_high"]))
        print(
            f"{system:24} ndcg@{k} {row['value']:.4f} [{low:.4f}, {high:.4f}]  "
            f"grade0_share@{k} {result.value(f'grade0_share@{k}', system)['value']:.4f}"
        )
    print(("BLESSED" if result.blessing["blessed"] else "NOT BLESSED") + f" -> {args.out}")
    for reason in result.blessing["reasons"]:
        print(f"  {reason}")
    return 0


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup evaluate``."""
    p = subparsers.add_parser(
        "evaluate", help="candidate vs baselines on judged queries and engagement; report and blessing"
    )
    _common(p)
    p.add_argument("--model", required=True, help="candidate bi-encoder folder")
    p.add_argument("--index", required=True, help="candidate index folder")
    p.add_argument(
        "--out", required=True, help="output folder: results.parquet, results.json, report.html, blessing.json"
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        type=_parse_baseline,
        metavar="NAME=MODEL,INDEX",
        help="a bi-encoder baseline (repeatable); channel baselines come from evaluation.baseline_channels",
    )
    p.add_argument("--judgments", help="judgments file [data.judgments_uri]")
    p.add_argument("--split", choices=["train", "validation", "test"], help="judged split [evaluation.split]")
    p.add_argument("--teacher-audit", help="audit.json of `unisup train-teacher --audit`: teachers gate the blessing")
    p.add_argument("--engagement", help="held-out engagement table (engagement schema)")
    p.set_defaults(handler=_evaluate)


def _push(args: argparse.Namespace) -> int:
    from unisup.promotion import push

    result = push(args.blessing, args.model, args.index, _config(args))
    print(
        f"experiment {result.experiment_id} v{result.version:04d} -> {result.config_uri}; model version "
        f"{result.model_version} at {result.model_uri}; index at {result.index_uri}"
    )
    return 0


def add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup push``."""
    p = subparsers.add_parser("push", help="promote a blessed candidate and write the next A/B experiment config")
    _common(p)
    p.add_argument("--blessing", required=True, help="blessing.json from `unisup evaluate`")
    p.add_argument("--model", required=True, help="bi-encoder folder of the candidate")
    p.add_argument("--index", required=True, help="index folder of the candidate")
    p.set_defaults(handler=_push)


def _rollback(args: argparse.Namespace) -> int:
    from unisup.promotion import rollback

    result = rollback(_config(args), args.experiment)
    print(
        f"experiment {result.experiment_id} v{result.version:04d} restores v{result.config['restored_version']:04d} "
        f"(rolled back v{result.config['rolled_back_version']:04d}) -> {result.config_uri}"
    )
    return 0


def add_rollback_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup rollback``."""
    p = subparsers.add_parser("rollback", help="restore the previous A/B experiment config as a new version")
    _common(p)
    p.add_argument("--experiment", help="experiment id [promotion.experiment_id]")
    p.set_defaults(handler=_rollback)


# ---------------------------------------------------------------- teachers


def _train_teacher(args: argparse.Namespace) -> None:
    from unisup.teachers.audit import format_audit, write_audit
    from unisup.teachers.training import train_and_audit, train_teachers

    cfg = _config(args)
    out = args.out or cfg.teachers.repository_uri
    if args.audit:
        report, audit = train_and_audit(cfg, out)
    else:
        report, audit = train_teachers(cfg.teachers, cfg.data, out, channels_cfg=cfg.channels), None
    for name, record in report["stages"].items():
        cut = " CUT BY THE max_seconds SAFETY NET" if record["cut_by_time"] else ""
        print(
            f"{name}: {record['steps']} of {record['planned_steps']} steps ({record['stop_reason']}{cut}), "
            f"best epoch {record['best_epoch']}, validation NLL {record['validation_nll_calibrated']:.4f} "
            f"at temperature {record['temperature']:.2f}, {record['seconds']} s"
        )
    print(f"teachers exported to the Triton repository {out}")
    if report["escalation"]:
        calibration = report["escalation"]
        for rule in ("max_prob", "boundary"):
            if calibration.get(rule):
                share = calibration["target_share"]
                print(f"escalation calibrated on validation ({rule}, target share {share}): {calibration[rule]}")
    if audit is not None:
        write_audit(audit, args.audit)
        print(format_audit(audit), end="")


def add_train_teacher_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup train-teacher``."""
    p = subparsers.add_parser(
        "train-teacher", help="fine-tune the cascade's ordinal teachers and export them to a Triton repository"
    )
    _common(p)
    p.add_argument("--out", help="Triton model repository to write [teachers.repository_uri]")
    p.add_argument("--audit", help="also write the quality audit (JSON, plus .md) here")
    p.set_defaults(handler=_train_teacher)


def _label(args: argparse.Namespace) -> None:
    from unisup import storage
    from unisup.teachers.labeling import label_pairs, serving_backend

    cfg = _config(args)
    with storage.local_copy(args.teachers or cfg.teachers.repository_uri) as repository:
        with serving_backend(cfg, str(repository)) as backend:
            report = label_pairs(args.pairs, args.out, cfg, backend, repository=str(repository))
    print(f"backend: {report['backend']}")
    print(
        f"{args.pairs}: rows in {report['rows_in']} = labeled {report['labeled']} + quarantined {report['quarantined']}"
        f" ({report['shards_resumed']} of {report['shards']} shards resumed) -> {args.out}"
    )
    for name in report["stages"]:
        print(
            f"  {name:12} reached {report['pairs_per_stage'][name]:>8}  decided {report['decided_per_stage'][name]:>8}"
            f"  {report['seconds_per_stage'][name]:.1f} s"
        )


def add_label_parser(subparsers: argparse._SubParsersAction) -> None:
    """``unisup label``."""
    p = subparsers.add_parser("label", help="label (query, item) pairs with the teacher cascade, in resumable shards")
    _common(p)
    p.add_argument("pairs", help="Parquet or CSV with query and item_id (or product_id) columns")
    p.add_argument("--out", required=True, help="output folder: labels.parquet, quarantine.parquet, report.json")
    p.add_argument("--teachers", help="Triton repository of the in-process backend [teachers.repository_uri]")
    p.set_defaults(handler=_label)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``unisup`` parser: each subcommand is added beside its handler."""
    parser = argparse.ArgumentParser(
        prog="unisup",
        description="Unified supervision for first-stage sponsored-search retrieval. One subcommand per stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_config_parser(sub)
    add_data_parser(sub)
    add_extract_logs_parser(sub)
    add_channels_parser(sub)
    add_fuse_parser(sub)
    add_train_parser(sub)
    add_build_index_parser(sub)
    add_evaluate_parser(sub)
    add_push_parser(sub)
    add_rollback_parser(sub)
    add_train_teacher_parser(sub)
    add_label_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args) or 0)
    except UnisupError as err:
        print(f"unisup: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        print(f"unisup: error: {f'{err.strerror}: {err.filename}' if err.filename else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run as a file (the Spark image's mainApplicationFile): its folder, the package, would put
    # config, logs, ... before other top-level modules of the same name.
    import os

    package = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != package]
    sys.exit(main())
