"""Offline evaluation: statistics, slices, blessing gates, outputs, and a run on the tiny sample."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest

from unisup import storage
from unisup.config import ConfigError, load_config
from unisup.errors import ArtifactMismatch, InputError
from unisup.evaluation import (
    RankingSystem,
    blessing_of,
    engagement_targets,
    evaluate,
    kfp_metrics,
    mean_with_ci,
    output_uris,
    paired_bootstrap,
    precomputed_system,
    read_results,
    run_evaluation,
    split_slices,
    write_outputs,
)
from unisup.schemas import EVAL_RESULTS, validate

ITEMS = [f"i{j:03d}" for j in range(120)]


def _cfg(**values):
    cfg = load_config("local").evaluation
    return dataclasses.replace(cfg, **{"n_bootstrap": 500, "cutoffs": [10, 25], "depth": 50, **values})


@pytest.fixture(scope="module")
def judged():
    """20 queries, 30 judged items each with grades 0..3, and the ideal ranking per query."""
    rng = np.random.default_rng(3)
    qrels = {}
    for i in range(20):
        items = rng.choice(ITEMS, 30, replace=False)
        qrels[f"q{i:02d}"] = {str(d): int(g) for d, g in zip(items, rng.integers(0, 4, 30), strict=True)}
    ideal = {q: sorted(j, key=lambda d: (-j[d], d)) for q, j in qrels.items()}
    return qrels, ideal


def _engagement(queries, items_of):
    rows = {"query": [], "item_id": [], "impressions": [], "clicks": [], "conversions": []}
    for n, q in enumerate(queries):
        for pos, item in enumerate(items_of(q)):
            rows["query"].append(q)
            rows["item_id"].append(item)
            rows["impressions"].append(100 - n)
            rows["clicks"].append(1)
            rows["conversions"].append(int(pos == 0))
    return pa.table(rows)


# ---------------------------------------------------------------- statistics


def test_paired_bootstrap_of_identical_systems_is_zero_with_p_one():
    values = np.linspace(0, 1, 30)
    est = paired_bootstrap(values, values, n_resamples=200)
    assert (est.value, est.ci_low, est.ci_high, est.p_value, est.n) == (0.0, 0.0, 0.0, 1.0, 30)


def test_paired_bootstrap_ci_and_p_value_agree_with_the_t_distribution():
    from scipy import stats

    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 200)
    cand = base + rng.normal(0.03, 0.15, 200)
    est = paired_bootstrap(cand, base, n_resamples=4000, seed=2)
    t = stats.ttest_rel(cand, base)
    half_width = stats.t.ppf(0.975, 199) * np.std(cand - base, ddof=1) / np.sqrt(200)
    assert est.value == pytest.approx(np.mean(cand - base))
    assert est.ci_low == pytest.approx(est.value - half_width, abs=0.004)
    assert est.ci_high == pytest.approx(est.value + half_width, abs=0.004)
    assert est.p_value == pytest.approx(t.pvalue, abs=0.02)


def test_paired_bootstrap_drops_queries_undefined_in_either_system():
    est = paired_bootstrap([1.0, np.nan, 0.5, 0.2], [0.0, 0.3, np.nan, 0.1], n_resamples=100)
    assert est.n == 2 and est.value == pytest.approx((1.0 + 0.1) / 2)
    with pytest.raises(ValueError, match="one value per query"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_mean_with_ci_brackets_the_mean():
    est = mean_with_ci([0.1, 0.5, np.nan, 0.9, 0.3], n_resamples=300)
    assert est.n == 4 and est.value == pytest.approx(0.45)
    assert est.ci_low < est.value < est.ci_high


def test_head_and_tail_by_frequency_ties_by_query_text():
    slices = split_slices(["d", "a", "b", "c"], {"a": 5, "b": 9, "c": 5}, head_fraction=0.5)
    assert slices == {"all": ["b", "a", "c", "d"], "head": ["b", "a"], "tail": ["c", "d"]}


def test_engagement_targets_keep_engaged_queries_most_frequent_first():
    table = pa.table(
        {
            "query": ["rare", "top", "top", "none"],
            "item_id": ["x", "a", "b", "c"],
            "impressions": [1, 50, 30, 99],
            "clicks": [1, 2, 0, 0],
            "conversions": [0, 1, 0, 0],
        }
    )
    targets = engagement_targets(table, max_queries=5)
    assert targets.clicked == {"top": {"a"}, "rare": {"x"}}
    assert targets.converted == {"top": {"a"}}
    assert targets.frequency == {"none": 99.0, "top": 80.0, "rare": 1.0}
    assert list(engagement_targets(table, max_queries=1).clicked) == ["top"]


# ---------------------------------------------------------------- evaluate + blessing


def test_a_better_candidate_is_blessed_and_every_row_is_accounted_for(judged):
    qrels, ideal = judged
    rng = np.random.default_rng(0)
    candidate = precomputed_system("candidate", ideal)
    shuffled = precomputed_system("random", {q: list(rng.permutation(ITEMS)[:50]) for q in qrels})
    result = evaluate(candidate, [shuffled], qrels, _cfg())

    n_metrics = 2 * 6  # six human metrics at two cutoffs
    assert result.table.num_rows == n_metrics * 3 * (2 + 1)  # slices x (two own rows + one comparison)
    assert validate(result.table, EVAL_RESULTS, "test").rows_in == result.table.num_rows
    row = result.value("ndcg@10", "candidate", "random")
    assert row["value"] == pytest.approx(1.0)
    assert row["delta"] == pytest.approx(1.0 - result.value("ndcg@10", "random")["value"])
    assert row["ci_low"] > 0 and row["p_value"] < 0.01 and row["n_queries"] == 20
    assert result.value("ndcg@10", "candidate", "random", slice="head")["n_queries"] == 6
    assert result.value("ndcg@10", "candidate", "random", slice="tail")["n_queries"] == 14
    assert result.blessing["blessed"] is True
    assert set(result.blessing["gates"]) == {
        "min_queries",
        "ndcg@10_delta_ci_low_vs_random",
        "grade0_share@10_vs_random",
        "engagement_recall@10_vs_random",
    }
    assert "no held-out engagement" in result.blessing["gates"]["engagement_recall@10_vs_random"]["reason"]
    assert result.blessing["evidence"]["candidate_metrics"]["ndcg@10"] == pytest.approx(1.0)


def test_a_worse_candidate_is_refused_with_its_reasons(judged):
    qrels, ideal = judged
    worst = precomputed_system("candidate", {q: list(reversed(r)) for q, r in ideal.items()})
    result = evaluate(worst, [precomputed_system("ideal", ideal)], qrels, _cfg())
    blessing = result.blessing
    assert blessing["blessed"] is False
    assert not blessing["gates"]["ndcg@10_delta_ci_low_vs_ideal"]["passed"]
    assert not blessing["gates"]["grade0_share@10_vs_ideal"]["passed"]
    assert any(r.startswith("ndcg@10 delta vs ideal") for r in blessing["reasons"])
    assert all("passed" not in r for r in blessing["reasons"])


def test_engagement_drop_beyond_the_allowance_fails_its_gate(judged):
    qrels, ideal = judged
    engaged = {q: [ideal[q][0], ideal[q][1]] for q in qrels}
    # the baseline puts the engaged items first; the candidate keeps only one of them
    base = precomputed_system("base", ideal)
    cand = precomputed_system("candidate", {q: [r[0]] + r[2:] for q, r in ideal.items()})
    targets = engagement_targets(_engagement(list(qrels), engaged.get), 100)
    result = evaluate(cand, [base], qrels, _cfg(gate_min_delta_ci_low=-1.0), engagement=targets)
    gate = result.blessing["gates"]["engagement_recall@10_vs_base"]
    assert gate["passed"] is False and gate["observed"] == pytest.approx(-0.5)
    assert result.value("engagement_recall@10", "candidate")["value"] == pytest.approx(0.5)
    assert result.value("conversion_recall@10", "candidate")["value"] == pytest.approx(1.0)
    assert result.value("engagement_recall@10", "candidate", "base")["judged_by"] == "engagement"
    # head / tail now follow engagement frequency: q00 has the most impressions
    assert result.slices["human"]["head"][0] == "q00"
    assert result.blessing["blessed"] is False


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"gate_metric": "ndcg@5"}, "evaluation.gate_metric 'ndcg@5'"),
        ({"gate_baselines": ["bm25"]}, "evaluation.gate_baselines"),
        ({"gate_metric": "engagement_recall@10"}, "evaluation.gate_metric 'engagement_recall@10'"),
    ],
)
def test_gate_settings_that_name_nothing_are_refused_before_any_ranking(judged, settings, key):
    qrels, ideal = judged

    def rank(queries, depth):
        raise AssertionError("ranked before the gate settings were checked")

    candidate = RankingSystem("candidate", rank)
    with pytest.raises(ConfigError, match=key):
        evaluate(candidate, [precomputed_system("b", ideal)], qrels, _cfg(**settings))


def test_no_judged_queries_is_an_input_error():
    with pytest.raises(InputError, match="no judged queries"):
        evaluate(precomputed_system("candidate", {}), [], {}, _cfg())


def test_outputs_are_written_and_the_report_is_self_contained(judged, tmp_path):
    from unisup.data.tables import read_table

    qrels, ideal = judged
    rng = np.random.default_rng(1)
    result = evaluate(
        precomputed_system("candidate", ideal),
        [precomputed_system("random", {q: list(rng.permutation(ITEMS)[:50]) for q in qrels})],
        qrels,
        _cfg(),
    )
    uris = output_uris(str(tmp_path))
    write_outputs(result, uris)
    assert read_table(uris["results"]).num_rows == result.table.num_rows
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["blessing"]["blessed"] is True and len(payload["results"]) == result.table.num_rows
    assert json.loads((tmp_path / "blessing.json").read_text())["blessed"] is True
    page = (tmp_path / "report.html").read_text()
    # forest plot, 1 per-query plot, grade bars, metric vs cutoff (10, 25) and each main metric's bars
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) >= 3 + 4 + 6
    assert not re.search(r'(src|href)="(http|//)', page)
    assert "BLESSED" in page
    metrics = kfp_metrics(result)
    assert metrics["ndcg@10"] == pytest.approx(1.0) and metrics["blessed"] == 1.0
    assert metrics["ndcg@10_delta_vs_random"] > 0
    assert all(isinstance(v, float) and not math.isnan(v) for v in metrics.values())


def test_cli_build_index_then_evaluate_on_the_tiny_sample_with_bm25(
    tiny_encoder_path, tiny_overrides, tmp_path, capsys
):
    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.cli import main

    tower = Tower.from_pretrained(tiny_encoder_path, max_length=32)
    model = str(save_biencoder(tower, tower, tmp_path / "model"))
    index = str(tmp_path / "index")
    common = [
        f"-o={o}"
        for o in tiny_overrides
        + [
            f"index.work_dir={tmp_path / 'shards'}",
            "index.factory=Flat",
            "index.search_params=''",
            "evaluation.n_bootstrap=200",
            "evaluation.baseline_channels=[bm25]",
        ]
    ]
    assert main(["build-index", "--model", model, "--out", index, *common]) == 0
    assert "Flat (inner_product, dim 32)" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                model,
                "--index",
                index,
                "--out",
                str(out),
                "--baseline",
                f"same-model={model},{index}",
                *common,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "NOT BLESSED" in printed and "vs bm25" in printed  # a random tiny model loses to BM25

    payload = json.loads((out / "results.json").read_text())
    assert payload["systems"] == {"candidate": "biencoder", "same-model": "biencoder", "bm25": "channel"}
    assert payload["settings"]["human_queries"] == 3  # the tiny sample's test split
    rows = {(r["system"], r["baseline"], r["metric"], r["slice"]): r for r in payload["results"]}
    same = rows[("candidate", "same-model", "ndcg@10", "all")]
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    assert 0.0 < rows[("bm25", None, "ndcg@10", "all")]["value"] <= 1.0  # BM25 finds judged products
    blessing = json.loads((out / "blessing.json").read_text())
    assert (out / "report.html").exists() and blessing["blessed"] is False
    # the blessing is bound to what was evaluated, and the results alone give it again
    results_uri = str(out / "results.json")
    assert blessing["evaluated"] == {
        "model": {"uri": model, "digest": storage.content_digest(model)},
        "index": {"uri": index, "digest": storage.content_digest(index)},
        "results": {"uri": results_uri, "digest": storage.content_digest(results_uri)},
    }
    cfg = load_config("local", [o[len("-o=") :] for o in common])
    rederived = blessing_of(read_results(results_uri), cfg.evaluation)
    assert (rederived["blessed"], rederived["reasons"]) == (blessing["blessed"], blessing["reasons"])
    assert {name: g["passed"] for name, g in rederived["gates"].items()} == {
        name: g["passed"] for name, g in blessing["gates"].items()
    }
    assert (
        main(
            [
                "evaluate",
                "--model",
                model,
                "--index",
                index,
                "--out",
                str(out),
                "--split",
                "train",
                "--judgments",
                str(tmp_path / "missing.csv"),
                *common,
            ]
        )
        == 2
    )


def test_a_teacher_audit_below_the_features_baseline_refuses_the_blessing():
    from unisup.evaluation import teacher_audit_gate, with_gate

    audit = {
        "pairs": 10,
        "split": "test",
        "cascade": {"qwk": 0.5, "condensed_ndcg@10": 0.8},
        "features_baseline": {"qwk": 0.6, "condensed_ndcg@10": 0.9},
        "gate": {"passed": False, "failures": ["stage precise: QWK 0.500 is below ..."], "tolerance": 0.01},
    }
    blessed = {"blessed": True, "reasons": ["all fine"], "gates": {"min_queries": {"passed": True, "reason": "ok"}}}
    refused = with_gate(blessed, "teacher_audit", teacher_audit_gate(audit))
    assert refused["blessed"] is False and refused["reasons"] == [refused["gates"]["teacher_audit"]["reason"]]
    assert "stage precise" in refused["reasons"][0]
    passing = with_gate(
        blessed, "teacher_audit", teacher_audit_gate({**audit, "gate": {**audit["gate"], "passed": True}})
    )
    assert passing["blessed"] is True and len(passing["reasons"]) == 2
    assert not teacher_audit_gate({k: v for k, v in audit.items() if k != "gate"})["passed"]


def test_an_index_of_another_model_or_catalog_is_refused_before_ranking(
    tiny_encoder_path, tiny_overrides, tiny_sample, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.index import build_catalog_index

    settings = [f"index.work_dir={tmp_path / 'shards'}", "index.factory=Flat", "index.search_params=''"]
    cfg = load_config("local", tiny_overrides + settings + ["evaluation.baseline_channels=[]"])
    models = {}
    for length in (16, 24):
        tower = Tower.from_pretrained(tiny_encoder_path, max_length=length)
        models[length] = str(save_biencoder(tower, tower, tmp_path / f"model-{length}"))
    index = str(tmp_path / "index")
    build_catalog_index(models[16], index, cfg, progress=False)
    monkeypatch.setattr(
        "unisup.evaluation.biencoder_system", lambda *a, **k: pytest.fail("a system was loaded before the check")
    )

    with pytest.raises(ArtifactMismatch) as err:
        run_evaluation(cfg, models[24], index, str(tmp_path / "eval"))
    assert storage.content_digest(models[16]) in str(err.value) and storage.content_digest(models[24]) in str(err.value)
    with pytest.raises(ArtifactMismatch, match="built by the model"):  # a baseline's index too
        run_evaluation(cfg, models[16], index, str(tmp_path / "eval"), [("other", models[24], index)])

    other = tmp_path / "other-products.parquet"
    pq.write_table(pq.read_table(tiny_sample["catalog"]).slice(1), other)
    other_cfg = load_config("local", tiny_overrides + settings + [f"data.catalog_uri={other}"])
    with pytest.raises(ArtifactMismatch) as err:
        run_evaluation(other_cfg, models[16], index, str(tmp_path / "eval"))
    message = str(err.value)
    assert str(tiny_sample["catalog"]) in message and str(other) in message
    for catalog in (tiny_sample["catalog"], other):
        assert storage.content_digest(str(catalog)) in message
    assert not (tmp_path / "eval").exists()
