"""The evaluate component: its function directly, and through kfp.local gating a push with dsl.If."""

import json

import pytest
from kfp import dsl

from components.evaluate import evaluate
from components.push import push
from unisup import storage
from unisup.data.tables import read_table
from unisup.schemas import validate


@pytest.fixture(scope="module")
def model_and_index(tiny_encoder_path, tiny_overrides, tmp_path_factory):
    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.config import load_config
    from unisup.index import build_catalog_index

    root = tmp_path_factory.mktemp("evaluate_component")
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16)
    model = save_biencoder(tower, tower, root / "model")
    cfg = load_config(
        "local", tiny_overrides + [f"index.work_dir={root / 'shards'}", "index.factory=Flat", "index.search_params=''"]
    )
    build_catalog_index(str(model), str(root / "index"), cfg, progress=False)
    return str(model), str(root / "index")


def _outputs(tmp_path):
    return {
        "results": dsl.Dataset(uri=str(tmp_path / "results")),
        "results_json": dsl.Artifact(uri=str(tmp_path / "json")),
        "metrics": dsl.Metrics(uri=str(tmp_path / "metrics")),
        "report": dsl.HTML(uri=str(tmp_path / "report")),
        "report_html": dsl.Artifact(uri=str(tmp_path / "report_html")),
        "blessing": dsl.Artifact(uri=str(tmp_path / "blessing")),
    }


def test_evaluate_function_refuses_a_random_model_against_bm25(
    model_and_index, tiny_overrides, tiny_fusion_inputs, tmp_path
):
    model, index = model_and_index
    out = _outputs(tmp_path)
    blessed = evaluate.python_func(
        candidate_model=dsl.Model(uri=model),
        candidate_index=dsl.Artifact(uri=index),
        baseline_model=dsl.Model(uri=model),
        baseline_index=dsl.Artifact(uri=index),
        engagement=dsl.Dataset(uri=str(tiny_fusion_inputs["engagement"])),
        baseline_name="same",
        config="local",
        overrides=tiny_overrides + ["evaluation.n_bootstrap=200", "evaluation.baseline_channels=[bm25]"],
        **out,
    )
    assert blessed is False
    table = validate(read_table(out["results"].path), "eval_results").accepted
    assert {"candidate", "same", "bm25"} == set(table["system"].to_pylist())
    assert "engagement" in set(table["judged_by"].to_pylist())
    blessing = json.loads((tmp_path / "blessing").read_text())
    assert not blessing["gates"]["ndcg@10_delta_ci_low_vs_bm25"]["passed"]
    assert blessing["gates"]["ndcg@10_delta_ci_low_vs_same"]["passed"]
    assert any("vs bm25" in r for r in blessing["reasons"])
    assert blessing["evaluated"]["results"] == {
        "uri": str(tmp_path / "json"),
        "digest": storage.content_digest(str(tmp_path / "json")),
    }
    assert blessing["evaluated"]["model"]["digest"] == storage.content_digest(model)
    assert blessing["evaluated"]["index"]["digest"] == storage.content_digest(index)
    assert "<img" in (tmp_path / "report").read_text()
    assert (tmp_path / "report_html" / "report.html").read_text() == (tmp_path / "report").read_text()
    assert out["metrics"].metadata["ndcg_at_10_delta_vs_same"] == 0.0 and out["metrics"].metadata["blessed"] == 0.0
    assert out["blessing"].metadata["blessed"] is False and out["results"].metadata["split"] == "test"
    assert json.loads(out["results"].metadata["evaluation"])["n_bootstrap"] == 200


def test_blessed_evaluation_gates_the_push_in_kfp_local(model_and_index, tiny_overrides, tmp_path, kfp_local):
    model, index = model_and_index
    serving = tmp_path / "serving"
    common = tiny_overrides + ["evaluation.n_bootstrap=200", "evaluation.baseline_channels=[]"]
    push_overrides = tiny_overrides + [  # the push is given the catalog the index was built on
        f"promotion.model_repository={serving / 'triton'}",
        f"promotion.index_root={serving / 'indexes'}",
        f"promotion.config_root={serving / 'config'}",
        f"promotion.control_model_uri={model}",
        f"promotion.control_index_uri={index}",
    ]

    @dsl.pipeline(name="evaluate-then-push")
    def pipeline(eval_overrides: list, push_overrides: list):
        candidate = dsl.importer(artifact_uri=model, artifact_class=dsl.Model)
        candidate_index = dsl.importer(artifact_uri=index, artifact_class=dsl.Artifact)
        evaluation = evaluate(
            candidate_model=candidate.output,
            candidate_index=candidate_index.output,
            baseline_model=candidate.output,
            baseline_index=candidate_index.output,
            baseline_name="same",
            overrides=eval_overrides,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        with dsl.If(evaluation.outputs["Output"] == True):  # noqa: E712 (a KFP condition, not a Python comparison)
            push_task = push(
                blessing=evaluation.outputs["blessing"],
                model=candidate.output,
                index=candidate_index.output,
                overrides=push_overrides,
            )
            push_task.set_caching_options(False)

    pipeline(eval_overrides=common, push_overrides=push_overrides)  # equal to its baseline: blessed
    assert (
        json.loads((serving / "config" / "experiments" / "unisup-retrieval" / "current.json").read_text())["version"]
        == 1
    )
    pipeline(eval_overrides=common + ["evaluation.gate_min_queries=100"], push_overrides=push_overrides)  # refused
    assert (
        json.loads((serving / "config" / "experiments" / "unisup-retrieval" / "current.json").read_text())["version"]
        == 1
    )
    [report] = [p for p in kfp_local.glob("evaluate-then-push-*/evaluate/report")][:1]
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert (report.parent / "report_html" / "report.html").read_text() == report.read_text()
    # the run id placeholder resolves to each run's id: the two runs name two ids
    settings = [
        json.loads(p.read_text())["settings"] for p in kfp_local.glob("evaluate-then-push-*/evaluate/results_json")
    ]
    run_ids = {s["run_id"] for s in settings}
    assert len(settings) == 2 == len(run_ids) and not run_ids & {"", dsl.PIPELINE_JOB_ID_PLACEHOLDER}
    assert all(s["config"] == "local" for s in settings)
