"""The compare_runs component: directly, and collecting evaluation results through kfp.local."""

import json

from kfp import dsl
from kfp.dsl import Artifact

from components._image import COMPONENTS_IMAGE
from components.compare import compare_runs
from unisup.data.tables import read_table


def write_results(path, candidate: float) -> str:
    rows = [
        {
            "system": "candidate",
            "baseline": None,
            "metric": "ndcg@10",
            "slice": "all",
            "value": candidate,
        },
        {"system": "bm25", "baseline": None, "metric": "ndcg@10", "slice": "all", "value": 0.3},
    ]
    path.write_text(json.dumps({"results": rows}))
    return str(path)


def test_compare_function_names_runs_from_recorded_overrides(tmp_path):
    results = []
    for preset, value in (("unified", 0.5), ("engagement_only", 0.4)):
        artifact = Artifact(name="r", uri=write_results(tmp_path / f"{preset}.json", value))
        artifact.metadata["overrides"] = json.dumps(["data.x=1", f"fusion.preset={preset}"])
        results.append(artifact)
    table = dsl.Dataset(name="table", uri=str(tmp_path / "table"))
    report, metrics = (
        dsl.HTML(name="report", uri=str(tmp_path / "r")),
        dsl.Metrics(name="m", uri=str(tmp_path / "m")),
    )
    compare_runs.python_func(results=results, table=table, report=report, metrics=metrics)
    assert read_table(table.path).to_pylist() == [
        {"system": "unified", "ndcg@10": 0.5},
        {"system": "engagement_only", "ndcg@10": 0.4},
        {"system": "bm25", "ndcg@10": 0.3},
    ]
    assert json.loads(table.metadata["runs"]) == ["unified", "engagement_only"]
    assert metrics.metadata == {
        "unified_ndcg_at_10": 0.5,
        "engagement_only_ndcg_at_10": 0.4,
        "bm25_ndcg_at_10": 0.3,
    }
    assert "<td>bm25</td>" in (tmp_path / "r").read_text()


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def recorded_results(results: dsl.Output[Artifact], source: str, preset: str):
    """Test helper: re-emit a results file as an artifact whose metadata records its preset."""
    import json
    import shutil

    shutil.copyfile(source, results.path)
    results.metadata["overrides"] = json.dumps([f"fusion.preset={preset}"])


def test_compare_collects_a_parallel_for_through_kfp_local(tmp_path, kfp_local):
    sources = {p: write_results(tmp_path / f"{p}.json", v) for p, v in (("unified", 0.5), ("relevance_only", 0.45))}

    @dsl.pipeline(name="compare-local")
    def pipeline(presets: list):
        with dsl.ParallelFor(presets) as preset:
            made = recorded_results(source=f"{tmp_path}/{preset}.json", preset=preset)
        compare_runs(results=dsl.Collected(made.outputs["results"]))

    pipeline(presets=list(sources))
    table = read_table(str(next(kfp_local.rglob("compare-runs/table"))))
    assert sorted(table["system"].to_pylist()) == ["bm25", "relevance_only", "unified"]
