"""Shared fixtures: tiny models, a small subsample of the bundled data, the GCS emulator, raw
logs whose hard cases cross files."""

from __future__ import annotations

import builtins
import datetime as dt
import json
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from unisup.schemas import RAW_LOGS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the packaged MiniLM tokenizer, randomly initialized."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from unisup.encoders import packaged_minilm_path

    path = tmp_path_factory.mktemp("tiny_encoder")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(packaged_minilm_path())).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> dict[str, Path]:
    """A deterministic subsample of the bundled sample: 12 judged queries (6 train,
    3 validation, 3 test), their judged products, and 300 other products."""
    from unisup.data.dataset import write_split

    out = tmp_path_factory.mktemp("tiny_sample")
    judgments = pacsv.read_csv(
        SAMPLE / "judgments.csv", convert_options=pacsv.ConvertOptions(column_types={"product_id": pa.string()})
    )
    queries = sorted(set(judgments["query"].to_pylist()))
    rng = np.random.default_rng(7)
    chosen = sorted(rng.choice(queries, size=12, replace=False).tolist())
    judgments = judgments.filter(pc.is_in(judgments["query"], value_set=pa.array(chosen)))
    catalog = pq.read_table(SAMPLE / "products.parquet")
    judged = pc.is_in(catalog["product_id"], value_set=pc.unique(judgments["product_id"]))
    others = np.flatnonzero(~np.asarray(judged))
    keep = np.zeros(catalog.num_rows, dtype=bool)
    keep[np.asarray(judged)] = True
    keep[rng.choice(others, size=300, replace=False)] = True
    catalog = catalog.filter(pa.array(keep))
    pq.write_table(catalog, out / "products.parquet")
    pacsv.write_csv(judgments, out / "judgments.csv")
    split = {"train": chosen[:6], "validation": chosen[6:9], "test": chosen[9:]}
    write_split(split, str(out / "split.json"), seed=7, fractions=[0.5, 0.25, 0.25])
    return {
        "catalog": out / "products.parquet",
        "judgments": out / "judgments.csv",
        "split": out / "split.json",
        "dir": out,
    }


@pytest.fixture(scope="session")
def tiny_overrides(tiny_sample, tiny_encoder_path, tmp_path_factory) -> list[str]:
    """Config overrides that point a run at the tiny sample and the tiny encoder."""
    cache = tmp_path_factory.mktemp("embedding_cache")
    return [
        f"data.catalog_uri={tiny_sample['catalog']}",
        f"data.judgments_uri={tiny_sample['judgments']}",
        f"data.split_uri={tiny_sample['split']}",
        f"channels.dense_model={tiny_encoder_path}",
        f"channels.cache_dir={cache}",
    ]


@pytest.fixture(scope="session")
def tiny_teacher_overrides(tiny_overrides, tiny_encoder_path) -> list[str]:
    """Two tiny cross-encoder stages (2 steps each) on few pairs: teachers trained in seconds."""
    stages = [
        {
            "name": "fast",
            "base_model": str(tiny_encoder_path),
            "num_layers": 1,
            "max_length": 24,
            "epochs": 1,
            "max_steps": 2,
        },
        {
            "name": "precise",
            "base_model": str(tiny_encoder_path),
            "max_length": 48,
            "epochs": 1,
            "max_steps": 2,
            "item_fields": ["title", "brand", "description"],
        },
    ]
    return tiny_overrides + [
        f"teachers.stages={json.dumps(stages)}",
        "teachers.max_train_pairs=32",
        "teachers.max_validation_pairs=16",
    ]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One Spark session (local[2]) for the tests that run the Spark engine: the extraction
    finds it active and keeps it; its scratch and warehouse folders are under pytest's."""
    from unisup.config import load_config
    from unisup.engines import start_spark_session

    session = start_spark_session(load_config("local").extraction, str(tmp_path_factory.mktemp("spark")))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tritonserver_available() -> None:
    """Skips the test when the tritonserver binary of nvidia-pytriton is not installed."""
    from unisup.serving.triton_server import pytriton_server_dir

    if pytriton_server_dir() is None:
        pytest.skip("tritonserver binary absent: nvidia-pytriton is not installed")


@pytest.fixture
def kfp_local(tmp_path) -> Path:
    """``kfp.local`` started with the subprocess runner in this environment (no venv per task);
    returns the pipeline root, where every task's outputs go."""
    from kfp import local

    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator in-process on a free port; yields the bucket name.

    Sets STORAGE_EMULATOR_HOST so that google-cloud-storage (and unisup.storage) talk to it.
    Uploads honour ifGenerationMatch as GCS does (see pipelines/local_gcs.py).
    """
    from pipelines.local_gcs import local_gcs

    bucket = "unisup-test"
    with local_gcs(bucket):
        yield bucket


@pytest.fixture(scope="session")
def tiny_fusion_inputs(tiny_sample, tmp_path_factory) -> dict[str, Path]:
    """Labels and engagement files for the tiny sample's queries, made by hand: the human
    grades stand in for teacher labels, and seeded impressions, clicks (mostly on relevant
    items) and channel ranks stand in for the logs."""
    from unisup.data.tables import write_table
    from unisup.schemas import ENGAGEMENT, LABELS, validate

    out = tmp_path_factory.mktemp("fusion_inputs")
    judgments = pacsv.read_csv(
        tiny_sample["judgments"], convert_options=pacsv.ConvertOptions(column_types={"product_id": pa.string()})
    )
    rng = np.random.default_rng(11)
    queries, items, grades = (
        judgments["query"].to_pylist(),
        judgments["product_id"].to_pylist(),
        judgments["rating"].to_pylist(),
    )
    n = len(queries)
    probs = [np.eye(4, dtype=np.float32)[g].tolist() for g in grades]
    labels = pa.table(
        {
            "query": queries,
            "item_id": items,
            "grade": pa.array(grades, pa.int8()),
            "probs": pa.array(probs, pa.list_(pa.float32())),
            "stage": ["human"] * n,
            "stage_scores": pa.array([[p] for p in probs], pa.list_(pa.list_(pa.float32()))),
        }
    )
    shown = rng.random(n) < 0.6
    impressions = np.where(shown, rng.integers(1, 20, n), 0)
    click_rate = np.where(np.asarray(grades) >= 2, 0.4, 0.1)
    clicks = np.minimum(impressions, rng.binomial(impressions, click_rate))
    conversions = rng.binomial(clicks, 0.3)
    ranks = [pa.array(np.where(rng.random(n) < 0.7, rng.integers(1, 60, n), 0), pa.int32()) for _ in range(2)]
    ranks = [pc.if_else(pc.equal(r, 0), pa.scalar(None, pa.int32()), r) for r in ranks]
    engagement = pa.table(
        {
            "query": queries,
            "item_id": items,
            "impressions": impressions,
            "clicks": clicks,
            "conversions": conversions,
            "revenue": conversions * 10.0,
            "under_impressions": np.where(shown, 0, 2),
            "ctr_debiased": clicks / np.maximum(impressions, 1),
            "ctr_smoothed": (clicks + 1) / (impressions + 10),
            "cvr_smoothed": (conversions + 1) / (clicks + 3),
            "n_channels": pa.array(
                [int(a is not None) + int(b is not None) for a, b in zip(ranks[0].to_pylist(), ranks[1].to_pylist())],
                pa.int8(),
            ),
            "best_rank_bm25": ranks[0],
            "best_rank_dense": ranks[1],
        }
    )
    write_table(validate(labels, LABELS).accepted, str(out / "labels.parquet"))
    write_table(validate(engagement, ENGAGEMENT).accepted, str(out / "engagement.parquet"))
    return {"labels": out / "labels.parquet", "engagement": out / "engagement.parquet"}


@pytest.fixture(scope="session")
def tiny_training_lists(tiny_fusion_inputs, tiny_overrides, tmp_path_factory) -> Path:
    """Unified training lists of the tiny sample's train queries (``unisup.fusion.fuse``)."""
    from unisup.config import load_config
    from unisup.fusion import fuse

    out = tmp_path_factory.mktemp("training_lists") / "lists.parquet"
    fuse(
        str(tiny_fusion_inputs["labels"]),
        str(tiny_fusion_inputs["engagement"]),
        str(out),
        None,
        load_config("local", tiny_overrides + ["fusion.list_size=16"]),
    )
    return out


@pytest.fixture(autouse=True)
def _restore_builtin_print():
    """kfp.local swaps ``builtins.print`` for an indenting one while a task runs; parallel
    tasks (dsl.ParallelFor) can leave the swap behind. Put the real print back after every
    test so that later tests (e.g. numba's import, which registers ``print``) see it."""
    original = builtins.print
    yield
    builtins.print = original


def schema_verdict(table: pa.Table, max_position: int):
    """The schema rules' accepted / quarantined split of raw logs of the day 2024-03-04 over
    the catalog items p0..p4: what the extraction's SQL must decide row for row."""
    from unisup.schemas import RuleContext, validate

    context = RuleContext(
        known_items=frozenset(f"p{i}" for i in range(5)),
        max_position=max_position,
        window_start=np.datetime64("2024-03-04"),
        window_end=np.datetime64("2024-03-05"),
    )
    return validate(table, "raw_logs", context=context, strict=False)


def _crossing_row(event: str, request: str, user: str, day: int, **changes) -> dict:
    row = {
        "event_id": event,
        "request_id": request,
        "timestamp": dt.datetime(2024, 3, 4 + day, 10, tzinfo=dt.UTC),
        "user_id": user,
        "session_id": "s",
        "user_agent": "Mozilla/5.0",
        "query": f"q{len(event) % 3}",
        "item_id": f"p{sum(map(ord, event)) % 5}",
        "position": 1 + sum(map(ord, event)) % 4,
        "impression": True,
        "click": sum(map(ord, event)) % 3 == 0,
        "conversion": False,
        "price": 9.5,
        "bid": 0.5,
        "rank_bm25": 1 + sum(map(ord, event)) % 7,
        "rank_dense": 1 + sum(map(ord, event)) % 5,
    }
    row.update(changes)
    return row


def _crossing_rows() -> list[list[dict]]:
    """Six files over two days whose hard cases cross files: duplicated event ids, a user over
    the request limit only over several files, a request split over two files, a user with a
    bot agent in one file, a user over the click-rate limit only in total."""
    files: list[list[dict]] = [[] for _ in range(6)]
    for f in range(6):
        day = f // 3
        files[f] += [_crossing_row(f"n{f}-{i}", f"r{f}-{i}", f"u{f}-{i % 6}", day) for i in range(24)]
    # duplicates: across shards, within a day in reverse file order, first copy broken
    files[0].append(_crossing_row("dupA", "rd1", "u1", 0))
    files[4].append(_crossing_row("dupA", "rd2", "u2", 1))
    files[1].append(_crossing_row("dupB", "rd3", "u1", 0))
    files[2].append(_crossing_row("dupB", "rd3", "u1", 0))
    files[0].append(_crossing_row("dupC", "rd4", "u3", 0, query=None))
    files[3].append(_crossing_row("dupC", "rd5", "u3", 1))
    # 4 + 4 requests on one day, over the limit of 6 only together; at the limit, with one of
    # the 6 requests in two files (over it if that request were counted twice)
    for f in (1, 2):
        files[f] += [_crossing_row(f"h{f}-{i}", f"heavy-{f}-{i}", "heavy", 0) for i in range(4)]
    files[1] += [_crossing_row(f"s-{i}", f"rs-{i}", "spanner", 0) for i in range(5)]
    files[1].append(_crossing_row("span-1", "span", "spanner", 0))
    files[2].append(_crossing_row("span-2", "span", "spanner", 0))
    # a bot agent in one file only
    files[0] += [_crossing_row(f"c0-{i}", f"rc0-{i}", "crawly", 0) for i in range(3)]
    files[5].append(_crossing_row("c5", "rc5", "crawly", 1, user_agent="Googlebot/2.1"))
    # 3 clicked impressions in each of two files: the click-rate rule needs 6 impressions
    for f in (2, 3):
        files[f] += [_crossing_row(f"k{f}-{i}", f"rk{f}-{i}", "clicker", f // 3, click=True) for i in range(3)]
    # out-of-window and unknown-item rows
    files[5].append(_crossing_row("late", "rl", "u0", 5))
    files[2].append(_crossing_row("ghost", "rg", "u0", 0, item_id="p99"))
    return files


@pytest.fixture
def crossing_catalog(tmp_path):
    """The five products p0 .. p4 of the crossing logs."""
    uri = tmp_path / "products.parquet"
    pq.write_table(pa.table({"product_id": [f"p{i}" for i in range(5)], "title": [f"item {i}" for i in range(5)]}), uri)
    return str(uri)


@pytest.fixture
def crossing_logs(tmp_path):
    """Raw logs whose hard cases cross files (:func:`_crossing_rows`); ``rank_dense`` only in
    the second day's files."""
    root = tmp_path / "logs"
    schema = RAW_LOGS.arrow_schema(["rank_bm25", "rank_dense"])
    for f, rows in enumerate(_crossing_rows()):
        table = pa.Table.from_pydict({c.name: [r[c.name] for r in rows] for c in schema}, schema=schema)
        if f < 3:
            table = table.drop_columns(["rank_dense"])
        path = root / f"date=2024-03-0{4 + f // 3}" / f"part-{f:02d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return str(root)
