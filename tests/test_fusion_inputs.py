"""The fuse stage against bad inputs: every bad engagement or label row is quarantined with a
reason and leaves the rest of its query as it would be without it; bad settings are
ConfigErrors raised before any input is read."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from unisup.config import ConfigError, FusionConfig, load_config
from unisup.data.dataset import read_split
from unisup.data.tables import read_artifact, read_table, write_table
from unisup.fusion import PRESETS, fuse, resolve_preset
from unisup.schemas import DataValidationError

K = 4


def engagement_row(query: str, item: str, **changes) -> dict:
    row = {
        "query": query,
        "item_id": item,
        "impressions": 10,
        "clicks": 2,
        "conversions": 1,
        "revenue": 5.0,
        "under_impressions": 0,
        "ctr_debiased": 0.2,
        "ctr_smoothed": 0.2,
        "cvr_smoothed": 0.4,
        "n_channels": 1,
        "best_rank_bm25": 3,
    }
    return {**row, **changes}


def label_row(query: str, item: str, grade: int, probs: list | None = None) -> dict:
    probs = np.eye(K)[grade].tolist() if probs is None else probs
    return {"query": query, "item_id": item, "grade": grade, "probs": probs, "stage": "small", "stage_scores": [probs]}


@dataclass
class Stage:
    """Fuses a clean set of two train queries of the tiny sample plus extra rows; ``spare`` is a
    catalog item the clean set does not use."""

    folder: Path
    overrides: list[str]
    queries: tuple[str, str]
    items: list[str]

    @property
    def spare(self) -> str:
        return self.items[7]

    def clean_rows(self) -> tuple[list[dict], list[dict]]:
        """q0: a clicked relevant item, a clicked irrelevant item ranked 1st (hard negative), an
        under-impression, a teacher-only item; q1: two impressed items."""
        (a, b), items = self.queries, self.items
        engagement = [
            engagement_row(a, items[0], clicks=4, ctr_smoothed=0.4, best_rank_bm25=2),
            engagement_row(a, items[1], clicks=3, ctr_smoothed=0.3, best_rank_bm25=1),
            engagement_row(a, items[2], clicks=1, conversions=0, ctr_smoothed=0.1, best_rank_bm25=30),
            engagement_row(a, items[3], impressions=0, clicks=0, conversions=0, under_impressions=3),
            engagement_row(b, items[5], best_rank_bm25=5),
            engagement_row(b, items[6], clicks=0, conversions=0, ctr_smoothed=0.05),
        ]
        grades = [(a, 0, 3), (a, 1, 0), (a, 2, 2), (a, 3, 2), (a, 4, 3), (b, 5, 2), (b, 6, 1)]
        return engagement, [label_row(q, items[i], g) for q, i, g in grades]

    def run(self, extra_engagement=(), extra_labels=(), name="run") -> tuple[dict, pa.Table, pa.Table]:
        """(report, training lists, quarantine) of the clean rows plus the extra ones."""
        engagement, labels = self.clean_rows()
        folder = self.folder / name
        folder.mkdir()
        write_table(pa.Table.from_pylist(engagement + list(extra_engagement)), str(folder / "engagement.parquet"))
        write_table(pa.Table.from_pylist(labels + list(extra_labels)), str(folder / "labels.parquet"))
        report = fuse(
            str(folder / "labels.parquet"),
            str(folder / "engagement.parquet"),
            str(folder / "lists.parquet"),
            str(folder / "report.json"),
            load_config("local", self.overrides),
        )
        return report, read_table(str(folder / "lists.parquet")), read_table(report["quarantine_uri"])


@pytest.fixture
def stage(tiny_sample, tmp_path) -> Stage:
    overrides = [
        f"data.catalog_uri={tiny_sample['catalog']}",
        f"data.judgments_uri={tiny_sample['judgments']}",
        f"data.split_uri={tiny_sample['split']}",
        "fusion.split=train",
        "fusion.num_random=3",
    ]
    items = read_table(str(tiny_sample["catalog"]))["product_id"].to_pylist()[:8]
    queries = tuple(read_split(str(tiny_sample["split"]))["train"][:2])
    return Stage(tmp_path, overrides, queries, items)


BAD_ENGAGEMENT = {
    "inf_ctr": ({"ctr_smoothed": float("inf")}, "ctr_smoothed is missing, NaN, infinite or negative"),
    "nan_ctr": ({"ctr_smoothed": float("nan")}, "ctr_smoothed is missing, NaN, infinite or negative"),
    "negative_ctr": ({"ctr_smoothed": -0.5}, "ctr_smoothed is missing, NaN, infinite or negative"),
    "nan_debiased_ctr": ({"ctr_debiased": float("nan")}, "ctr_debiased is missing, NaN, infinite or negative"),
    "inf_cvr": ({"cvr_smoothed": float("inf")}, "cvr_smoothed is missing, NaN, infinite or negative"),
    "cvr_above_1": ({"cvr_smoothed": 1.5}, "cvr_smoothed above 1"),
    "negative_clicks": ({"clicks": -3, "conversions": 0}, "clicks is missing, NaN, infinite or negative"),
    "negative_impressions": (
        {"impressions": -1, "clicks": 0, "conversions": 0},
        "impressions is missing, NaN, infinite or negative",
    ),
    "missing_impressions": ({"impressions": None}, "impressions is missing, NaN, infinite or negative"),
    "clicks_above_impressions": ({"impressions": 2, "clicks": 5, "conversions": 0}, "more clicks than impressions"),
    "conversions_above_clicks": ({"clicks": 1, "conversions": 4}, "more conversions than clicks"),
    "negative_channels": ({"n_channels": -1}, "n_channels is missing, NaN, infinite or negative"),
    "rank_below_1": ({"best_rank_bm25": -60}, "best_rank_bm25 below 1"),
    "unknown_item": ({"item_id": "not-in-the-catalog"}, "item_id not in the catalog"),
}


@pytest.mark.parametrize("changes, reason", BAD_ENGAGEMENT.values(), ids=BAD_ENGAGEMENT.keys())
def test_a_bad_engagement_row_is_quarantined_and_its_query_keeps_its_values(stage, changes, reason):
    _, clean, _ = stage.run(name="clean")
    bad = engagement_row(stage.queries[0], stage.spare, **{"clicks": 9, "ctr_smoothed": 0.9, **changes})
    report, lists, quarantine = stage.run([bad])
    assert quarantine.select(["input", "quarantine_reason", "source_row", "item_id"]).to_pylist() == [
        {"input": "engagement", "quarantine_reason": reason, "source_row": 6, "item_id": bad["item_id"]}
    ]
    assert report["inputs"]["engagement"] == {"rows_in": 7, "accepted": 6, "quarantined": 1, "reasons": {reason: 1}}
    assert lists.equals(clean)  # the other items of the query keep their engagement, prior and target
    assert stage.spare not in lists["item_id"].to_pylist()
    assert max(r["engagement"] for r in lists.to_pylist() if r["query"] == stage.queries[0]) == 1.0


BAD_LABELS = {
    "nan_prob": ([float("nan"), 0.0, 0.0, 1.0], "probs not all finite and in 0..1"),
    "inf_prob": ([0.0, 0.0, 0.0, float("inf")], "probs not all finite and in 0..1"),
    "negative_prob": ([-0.5, 0.0, 0.5, 1.0], "probs not all finite and in 0..1"),
    "prob_above_1": ([0.0, 0.0, -0.5, 1.5], "probs not all finite and in 0..1"),
    "null_entry": ([None, 0.0, 0.0, 1.0], "probs not all finite and in 0..1"),
    "sum_not_1": ([0.0, 0.0, 0.5, 0.9], "probs do not sum to 1 (within 0.001)"),
    "wrong_length": ([0.0, 1.0], "probs does not have one entry per grade"),
    "missing": (None, "missing probs"),
}


@pytest.mark.parametrize("probs, reason", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_a_bad_label_row_is_quarantined_and_its_query_keeps_its_values(stage, probs, reason):
    _, clean, _ = stage.run(name="clean")
    bad = {**label_row(stage.queries[0], stage.spare, 3), "probs": probs}
    report, lists, quarantine = stage.run([], [bad])
    assert quarantine.select(["input", "quarantine_reason", "source_row", "item_id"]).to_pylist() == [
        {"input": "labels", "quarantine_reason": reason, "source_row": 7, "item_id": stage.spare}
    ]
    assert report["inputs"]["labels"] == {"rows_in": 8, "accepted": 7, "quarantined": 1, "reasons": {reason: 1}}
    assert lists.equals(clean)


def test_a_label_of_an_item_not_in_the_catalog_never_enters_the_lists(stage):
    _, clean, _ = stage.run(name="clean")
    report, lists, quarantine = stage.run([], [label_row(stage.queries[0], "not-in-the-catalog", 3)])
    assert quarantine["quarantine_reason"].to_pylist() == ["item_id not in the catalog"]
    assert "not-in-the-catalog" not in lists["item_id"].to_pylist() and lists.equals(clean)


def test_the_quarantine_table_accounts_for_every_input_row(stage, tmp_path):
    a, b = stage.queries
    bad_engagement = [
        engagement_row(a, stage.spare, ctr_smoothed=float("inf")),
        engagement_row(b, "not-in-the-catalog"),
    ]
    bad_labels = [label_row(b, stage.spare, 1, [0.2, -0.1, 0.9, 0.0])]
    report, lists, quarantine = stage.run(bad_engagement, bad_labels)
    assert report["quarantine_uri"] == str(tmp_path / "run" / "lists.quarantine.parquet")
    for name, counts in report["inputs"].items():
        assert counts["rows_in"] == counts["accepted"] + counts["quarantined"]
        assert counts["quarantined"] == quarantine["input"].to_pylist().count(name)
    assert quarantine.num_rows == 3 and None not in quarantine["quarantine_reason"].to_pylist()
    # the rows come back whole: engagement columns for engagement rows, label columns for label rows
    rows = quarantine.to_pylist()
    assert rows[0]["ctr_smoothed"] == float("inf") and rows[0]["probs"] is None
    assert rows[2]["probs"] == pytest.approx([0.2, -0.1, 0.9, 0.0]) and rows[2]["ctr_smoothed"] is None
    # a clean run writes an empty quarantine
    assert stage.run(name="clean")[2].num_rows == 0


def test_strict_label_validation_names_the_file_the_column_and_the_rows(stage, tmp_path):
    bad = [label_row(stage.queries[0], stage.spare, 3, [float("nan"), 0.0, 0.0, 1.0])]
    stage.run([], bad + [label_row(stage.queries[1], stage.items[4], 3, [-1.0, 0.0, 1.0, 1.0])])
    uri = str(tmp_path / "run" / "labels.parquet")
    with pytest.raises(DataValidationError) as raised:
        read_artifact(uri, "labels")
    assert str(raised.value).startswith(f"labels ({uri}): column 'probs', rows 8, 9 [rule: probs_in_0_1]")


def test_an_unknown_preset_is_a_config_error_before_any_input_is_read(tmp_path):
    config = load_config(
        "local", [f"data.catalog_uri={tmp_path / 'absent-catalog.parquet'}", "fusion.preset=clicks_only"]
    )
    with pytest.raises(ConfigError) as raised:
        fuse(
            str(tmp_path / "absent-labels"), str(tmp_path / "absent-engagement"), str(tmp_path / "lists"), None, config
        )
    assert str(raised.value) == f"fusion.preset: unknown preset 'clicks_only'; known: {', '.join(PRESETS)}"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"split": "trian"}, "fusion.split: 'trian' not in logged, all, train, validation, test"),
        ({"prior_weight": float("nan")}, "fusion.prior_weight must be a finite number, got nan"),
        ({"grade_gains": [0.0, 1.0, float("inf"), 3.0]}, r"fusion.grade_gains\[2\] must be a finite number, got inf"),
        ({"prior_channel_weights": {"bm25": float("nan")}}, "fusion.prior_channel_weights.bm25 must be a finite"),
        ({"grade_gains": [0.0, 1.0]}, r"fusion.grade_gains has 2 entries, expected one per grade \(4\)"),
        ({"unlabeled_grade": 9}, "fusion.unlabeled_grade must be in 0..3, got 9"),
        ({"prior_rrf_k": -1}, "fusion.prior_rrf_k must be >= 0, got -1"),
        ({"num_random": 40}, r"fusion.num_random \(40\) must be below fusion.list_size \(32\)"),
        ({"prior_normalization": "mean"}, "fusion.prior_normalization: 'mean' not in"),
    ],
)
def test_bad_fusion_settings_are_config_errors_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_preset(replace(FusionConfig(), **changes), K)


def test_an_input_without_a_required_column_is_named_and_nothing_is_written(stage, tmp_path):
    engagement, labels = stage.clean_rows()
    write_table(pa.Table.from_pylist(engagement).drop_columns(["ctr_smoothed"]), str(tmp_path / "engagement.parquet"))
    write_table(pa.Table.from_pylist(labels), str(tmp_path / "labels.parquet"))
    with pytest.raises(DataValidationError) as raised:
        fuse(
            str(tmp_path / "labels.parquet"),
            str(tmp_path / "engagement.parquet"),
            str(tmp_path / "lists.parquet"),
            str(tmp_path / "report.json"),
            load_config("local", stage.overrides),
        )
    assert str(raised.value).startswith(
        f"engagement ({tmp_path / 'engagement.parquet'}): column 'ctr_smoothed': required column is missing"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engagement.parquet", "labels.parquet"]


def test_the_cli_writes_the_quarantine_where_asked_and_validates_engagement_items(stage, tmp_path, capsys):
    from unisup.cli import main

    engagement, labels = stage.clean_rows()
    engagement.append(engagement_row(stage.queries[0], "not-in-catalog"))
    write_table(pa.Table.from_pylist(engagement), str(tmp_path / "engagement.parquet"))
    write_table(pa.Table.from_pylist(labels), str(tmp_path / "labels.parquet"))
    overrides = [arg for override in stage.overrides for arg in ("-o", override)]
    quarantine = tmp_path / "rejected.parquet"
    args = ["--labels", str(tmp_path / "labels.parquet"), "--engagement", str(tmp_path / "engagement.parquet")]
    args += ["--out", str(tmp_path / "lists.parquet"), "--quarantine", str(quarantine)]
    assert main(["fuse", *args, *overrides]) == 0
    rejected = read_table(str(quarantine)).to_pylist()
    assert [(row["input"], row["item_id"]) for row in rejected] == [("engagement", "not-in-catalog")]
    assert f"quarantine -> {quarantine}" in capsys.readouterr().out

    assert main(["data", "validate", "engagement", str(tmp_path / "engagement.parquet"), *overrides]) == 2
    assert "item_id" in capsys.readouterr().err
