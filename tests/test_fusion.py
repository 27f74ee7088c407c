"""Prior, fused targets, presets and training lists on small hand-built tables."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest

from unisup.config import ConfigError, FusionConfig, load_config
from unisup.fusion import (
    PRESETS,
    build_training_lists,
    fuse,
    fused_target,
    multichannel_prior,
    normalize_per_query,
    resolve_preset,
)
from unisup.schemas import ENGAGEMENT, LABELS, validate

R0 = 2
K = 4
CATALOG = [f"p{i:03d}" for i in range(200)]


def make_engagement(rows: list[dict]) -> pa.Table:
    """Engagement rows with defaults; keys: query, item_id, impressions, clicks, conversions,
    under_impressions, ctr_smoothed, cvr_smoothed, best_rank_bm25, best_rank_dense."""
    full = []
    for r in rows:
        ranks = [r.get("best_rank_bm25"), r.get("best_rank_dense")]
        full.append(
            {
                "query": r["query"],
                "item_id": r["item_id"],
                "impressions": r.get("impressions", 0),
                "clicks": r.get("clicks", 0),
                "conversions": r.get("conversions", 0),
                "revenue": 0.0,
                "under_impressions": r.get("under_impressions", 0),
                "ctr_debiased": r.get("ctr_smoothed", 0.0),
                "ctr_smoothed": r.get("ctr_smoothed", 0.0),
                "cvr_smoothed": r.get("cvr_smoothed", 0.0),
                "n_channels": sum(x is not None for x in ranks),
                "best_rank_bm25": ranks[0],
                "best_rank_dense": ranks[1],
            }
        )
    table = pa.Table.from_pylist(full, schema=ENGAGEMENT.arrow_schema(["best_rank_bm25", "best_rank_dense"]))
    return validate(table, "engagement").accepted


def make_labels(rows: list[tuple[str, str, int]]) -> pa.Table:
    table = pa.table(
        {
            "query": [q for q, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "grade": pa.array([g for _, _, g in rows], pa.int8()),
            "probs": pa.array([np.eye(K, dtype=np.float32)[g].tolist() for _, _, g in rows], pa.list_(pa.float32())),
            "stage": ["small"] * len(rows),
            "stage_scores": pa.array(
                [[np.eye(K, dtype=np.float32)[g].tolist()] for _, _, g in rows], pa.list_(pa.list_(pa.float32()))
            ),
        }
    )
    return validate(table, LABELS, context=None).accepted


@pytest.fixture
def inputs() -> tuple[pa.Table, pa.Table]:
    """Two queries. q1: a clicked relevant item, a clicked irrelevant item ranked 1st by BM25
    (hard negative), a relevant under-impression, teacher-only candidates. q2: no relevant item."""
    engagement = make_engagement(
        [
            dict(
                query="q1",
                item_id="p000",
                impressions=10,
                clicks=4,
                conversions=1,
                ctr_smoothed=0.4,
                cvr_smoothed=0.25,
                best_rank_bm25=3,
                best_rank_dense=2,
            ),
            dict(query="q1", item_id="p001", impressions=10, clicks=5, ctr_smoothed=0.5, best_rank_bm25=1),
            dict(query="q1", item_id="p002", impressions=10, clicks=0, ctr_smoothed=0.05, best_rank_dense=30),
            dict(query="q1", item_id="p003", under_impressions=3, best_rank_bm25=40, best_rank_dense=50),
            dict(query="q2", item_id="p010", impressions=5, clicks=1, ctr_smoothed=0.2, best_rank_bm25=2),
            dict(query="q2", item_id="p011", impressions=5, ctr_smoothed=0.0, best_rank_bm25=60),
        ]
    )
    labels = make_labels(
        [
            ("q1", "p000", 3),
            ("q1", "p001", 0),
            ("q1", "p002", 2),
            ("q1", "p003", 2),
            ("q1", "p004", 3),
            ("q1", "p005", 1),
            ("q2", "p010", 1),
            ("q2", "p011", 0),
        ]
    )
    return labels, engagement


def _lists(labels, engagement, **overrides):
    cfg = dataclasses.replace(FusionConfig(), num_random=3, min_list_size=2, **overrides)
    return build_training_lists(labels, engagement, CATALOG, cfg, R0, K)


def _by_item(table: pa.Table, query: str) -> dict[str, dict]:
    return {r["item_id"]: r for r in table.to_pylist() if r["query"] == query}


def test_prior_is_rrf_plus_agreement_normalized_per_query():
    cfg = dataclasses.replace(
        FusionConfig(),
        prior_rrf_k=10,
        prior_agreement_weight=0.01,
        prior_normalization="none",
        prior_channel_weights={"dense": 2.0},
    )
    ranks = {"bm25": np.array([1.0, np.nan, 5.0]), "dense": np.array([2.0, 1.0, np.nan])}
    query = np.array(["a", "a", "b"])
    raw = multichannel_prior(ranks, np.array([2, 1, 1]), query, cfg)
    expected = [1 / 11 + 2 / 12 + 0.02, 2 / 11 + 0.01, 1 / 15 + 0.01]
    np.testing.assert_allclose(raw, expected)
    normalized = multichannel_prior(
        ranks, np.array([2, 1, 1]), query, dataclasses.replace(cfg, prior_normalization="max")
    )
    np.testing.assert_allclose(normalized, [1.0, expected[1] / expected[0], 1.0])
    summed = normalize_per_query(np.array(expected), query, "sum")
    np.testing.assert_allclose([summed[0] + summed[1], summed[2]], [1.0, 1.0])
    minmax = normalize_per_query(np.array([1.0, 3.0, 2.0]), np.array(["a", "a", "a"]), "minmax")
    np.testing.assert_allclose(minmax, [0.0, 1.0, 0.5])


def test_fused_target_formula_gates_engagement_and_penalizes_irrelevant_prior():
    cfg = dataclasses.replace(FusionConfig(), prior_weight=0.5, engagement_weight=2.0, hard_negative_weight=1.5)
    gain = np.array([3.0, 0.0, 0.0])
    grade = np.array([3, 0, 1])
    prior = np.array([0.2, 1.0, 0.0])
    engagement = np.array([0.5, 1.0, 1.0])
    t = fused_target(gain, grade, prior, engagement, R0, cfg)
    np.testing.assert_allclose(t, [3 + 0.1 + 1.0, 0.5 - 1.5, 0.0])
    assert t[1] < 0  # a high-prior irrelevant item is a hard negative; its clicks never lift it


def test_unified_lists_sources_targets_and_random_negatives(inputs):
    labels, engagement = inputs
    result = _lists(labels, engagement)
    q1 = _by_item(result.lists, "q1")
    assert q1["p001"]["source"] == "hard_negative" and q1["p001"]["target"] < 0
    assert q1["p000"]["source"] == "impression" and q1["p000"]["engagement"] > 0
    assert q1["p003"]["source"] == "under_impression"
    assert q1["p004"]["source"] == "teacher" and q1["p004"]["prior"] == 0
    # the relevant clicked, high-prior item gets the highest target
    assert max(q1.values(), key=lambda r: r["target"])["item_id"] == "p000"
    randoms = [i for i, r in q1.items() if r["source"] == "random"]
    assert len(randoms) == 3 and not set(randoms) & {f"p00{i}" for i in range(6)}
    assert all(q1[i]["grade"] is None and q1[i]["target"] == 0 for i in randoms)
    # q2 has no relevant item: skipped and counted
    assert "q2" not in set(result.lists["query"].to_pylist())
    assert result.report["skipped_lists"] == {"no positive in the list": 1}
    assert result.report["items_per_source"]["random"] == 3
    assert result.report["lists"] == 1 and result.report["rows"] == result.lists.num_rows


def test_lists_are_deterministic_and_capped(inputs):
    labels, engagement = inputs
    a = _lists(labels, engagement, list_size=6, max_teacher=1)
    b = _lists(labels, engagement, list_size=6, max_teacher=1)
    assert a.lists.equals(b.lists)
    assert a.lists.num_rows == 6
    c = _lists(labels, engagement, list_size=6, max_teacher=1, seed=5)
    assert c.lists.num_rows == 6 and not c.lists.equals(a.lists)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_selected_by_config_alone(inputs, preset):
    labels, engagement = inputs
    result = _lists(labels, engagement, preset=preset)
    rows = _by_item(result.lists, "q1")
    effective, _ = resolve_preset(dataclasses.replace(FusionConfig(), num_random=3, min_list_size=2, preset=preset), K)
    assert result.report["parameters"] == dataclasses.asdict(effective)
    if preset == "engagement_only":
        assert {r["source"] for r in rows.values()} == {"impression", "random"}
        assert all(r["grade"] is None for r in rows.values())
        assert (
            {i for i, r in rows.items() if r["target"] == 1.0}
            == {i for i, r in rows.items() if r["clicked"]}
            == {"p000", "p001"}
        )
        assert _by_item(result.lists, "q2")["p010"]["target"] == 1.0
    elif preset == "relevance_only":
        assert {i: r["target"] for i, r in rows.items() if r["grade"] is not None} == {
            i: float(r["grade"]) for i, r in rows.items() if r["grade"] is not None
        }
    elif preset == "unified_no_prior":
        assert rows["p001"]["target"] == 0.0 and rows["p000"]["target"] > 3.0
    elif preset == "unified_no_engagement":
        assert rows["p000"]["target"] == pytest.approx(3.0 + 0.5 * rows["p000"]["prior"])
        assert rows["p001"]["target"] < 0


def test_unknown_preset_is_a_clear_error(inputs):
    with pytest.raises(ConfigError, match="fusion.preset: unknown preset 'clicks_only'"):
        _lists(*inputs, preset="clicks_only")


def test_fuse_stage_files_quarantine_and_report(inputs, tiny_sample, tmp_path):
    from unisup.data.dataset import read_split
    from unisup.data.tables import read_table, write_table

    labels, engagement = inputs
    catalog_ids = read_table(str(tiny_sample["catalog"]))["product_id"].to_pylist()
    train = read_split(str(tiny_sample["split"]))["train"]
    rename = {"q1": train[0], "q2": train[1]}
    item_map = {f"p{i:03d}": catalog_ids[i] for i in range(20)}

    def remap(table: pa.Table) -> pa.Table:
        table = table.set_column(0, "query", pa.array([rename[q] for q in table["query"].to_pylist()]))
        return table.set_column(1, "item_id", pa.array([item_map[i] for i in table["item_id"].to_pylist()]))

    labels, engagement = remap(labels), remap(engagement)
    bad = labels.slice(0, 1).set_column(2, "grade", pa.array([7], pa.int8()))  # grade outside 0..3
    write_table(pa.concat_tables([labels, bad]), str(tmp_path / "labels.parquet"))
    write_table(engagement, str(tmp_path / "engagement.parquet"))
    overrides = [
        f"data.catalog_uri={tiny_sample['catalog']}",
        f"data.judgments_uri={tiny_sample['judgments']}",
        f"data.split_uri={tiny_sample['split']}",
        "fusion.num_random=3",
        "fusion.split=train",
    ]
    report = fuse(
        str(tmp_path / "labels.parquet"),
        str(tmp_path / "engagement.parquet"),
        str(tmp_path / "lists.parquet"),
        str(tmp_path / "report.json"),
        load_config("local", overrides),
    )
    assert report["inputs"]["labels"] == {
        "rows_in": 9,
        "accepted": 8,
        "quarantined": 1,
        "reasons": {"grade outside the grade scale": 1},
    }
    lists = read_table(str(tmp_path / "lists.parquet"))
    validate(lists, "training_lists")
    assert set(lists["query"].to_pylist()) == {train[0]}
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == lists.num_rows
    assert report["queries_requested"] == len(train) and report["queries_without_candidates"] == len(train) - 2


def test_logged_split_trains_on_logged_queries_but_never_on_held_out_ones(tiny_sample):
    import pyarrow as pa

    from unisup.config import load_config
    from unisup.data.dataset import read_split
    from unisup.fusion import training_queries

    cfg = load_config("local", [f"data.split_uri={tiny_sample['split']}"])
    split = read_split(str(tiny_sample["split"]))
    logged = [split["train"][0], split["test"][0], split["validation"][0], "derived query"]
    engagement = pa.table({"query": logged})
    assert cfg.fusion.split == "logged"
    assert training_queries(cfg, engagement) == sorted([split["train"][0], "derived query"])
    train_only = load_config("local", [f"data.split_uri={tiny_sample['split']}", "fusion.split=train"])
    assert training_queries(train_only, engagement) == split["train"]
