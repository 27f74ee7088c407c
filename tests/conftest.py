"""Shared fixtures: tiny models, a small subsample of the bundled data, the GCS emulator."""

from __future__ import annotations

import builtins
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

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

    from unisup.channels import packaged_minilm_path

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
    from unisup.data.sample import write_split

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
