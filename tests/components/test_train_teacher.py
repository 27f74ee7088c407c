"""The train_teacher and label components: their functions directly, and chained through kfp.local."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from kfp import dsl

from components.label import label
from components.train_teacher import train_teacher
from unisup.data.tables import read_table
from unisup.model_card import front_matter
from unisup.schemas import validate


@pytest.fixture(scope="module")
def component_overrides(tiny_teacher_overrides) -> list[str]:
    return tiny_teacher_overrides + ["labeling.shard_size=16"]


@pytest.fixture(scope="module")
def pairs_file(tiny_sample, tmp_path_factory) -> Path:
    table = pacsv.read_csv(
        tiny_sample["judgments"], convert_options=pacsv.ConvertOptions(column_types={"product_id": pa.string()})
    )
    path = tmp_path_factory.mktemp("component_pairs") / "pairs.parquet"
    pq.write_table(table.select(["query", "product_id"]).slice(0, 40).rename_columns(["query", "item_id"]), path)
    return path


def test_train_teacher_and_label_functions(component_overrides, pairs_file, tmp_path):
    teachers = dsl.Model(uri=str(tmp_path / "teachers"))
    audit = dsl.Metrics(uri=str(tmp_path / "audit.json"))
    report = dsl.Markdown(uri=str(tmp_path / "audit.md"))
    confusion = dsl.ClassificationMetrics(uri=str(tmp_path / "confusion"))
    train_teacher.python_func(
        teachers=teachers,
        audit=audit,
        audit_report=report,
        grade_confusion=confusion,
        config="local",
        overrides=component_overrides,
    )
    assert (Path(teachers.path) / "fast" / "config.pbtxt").exists() and (
        Path(teachers.path) / "precise" / "1" / "model.py"
    ).exists()
    assert teachers.metadata["fast_steps"] == 2 and json.loads(teachers.metadata["stages"])[1]["name"] == "precise"
    assert set(json.loads(Path(audit.path).read_text())["stages"]) == {"fast", "precise"}
    assert "cascade_exact" in audit.metadata and "raters_qwk" in audit.metadata
    # the UI's views: the audit table as Markdown, the cascade's grades against the human ones
    assert "| cascade |" in Path(report.path).read_text()
    # the repository's model card holds the audit's figures
    card = front_matter((Path(teachers.path) / "README.md").read_text())
    figures = {m["name"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert figures["cascade QWK"] == pytest.approx(audit.metadata["cascade_qwk"], abs=1e-6)
    assert card["audit_passed"] == bool(audit.metadata["audit_passed"])
    pairs = json.loads(Path(audit.path).read_text())["pairs"]
    matrix = confusion.metadata["confusionMatrix"]
    assert len(matrix["annotationSpecs"]) == len(matrix["rows"]) == 4
    assert sum(sum(row["row"]) for row in matrix["rows"]) == pairs

    labels, work = dsl.Dataset(uri=str(tmp_path / "labels.parquet")), dsl.Artifact(uri=str(tmp_path / "work"))
    metrics = dsl.Metrics(uri=str(tmp_path / "m"))
    label.python_func(
        pairs=dsl.Dataset(uri=str(pairs_file)),
        teachers=teachers,
        labels=labels,
        work=work,
        metrics=metrics,
        config="local",
        overrides=component_overrides,
    )
    table = validate(read_table(labels.path), "labels").accepted
    assert table.num_rows == labels.metadata["rows"] == 40
    assert labels.metadata["backend"] == "inprocess" and labels.metadata["shard_size"] == 16
    assert json.loads(labels.metadata["cascade_stages"]) == ["fast", "precise"]
    assert metrics.metadata["fast_pairs"] == 40 >= metrics.metadata["precise_pairs"]


def test_components_chained_in_kfp_local(component_overrides, pairs_file, tmp_path, kfp_local):

    @dsl.pipeline(name="teachers-only")
    def pipeline(overrides: list):
        pairs = dsl.importer(artifact_uri=str(pairs_file), artifact_class=dsl.Dataset)
        trained = train_teacher(overrides=overrides)
        label(pairs=pairs.output, teachers=trained.outputs["teachers"], overrides=overrides)

    pipeline(overrides=component_overrides)
    outputs = list(kfp_local.glob("teachers-only-*/label/labels"))
    assert len(outputs) == 1
    table = validate(read_table(str(outputs[0])), "labels").accepted
    assert table.num_rows == 40 and set(table["stage"].to_pylist()) <= {"fast", "precise"}
