"""The fuse component: its function directly, and through kfp.local."""

import json

from kfp import dsl

from components.fuse import fuse
from unisup.data.tables import read_table
from unisup.schemas import validate


def test_fuse_function(tiny_fusion_inputs, tiny_overrides, tmp_path):
    lists, quarantine, report, metrics = (
        dsl.Dataset(uri=str(tmp_path / "lists")),
        dsl.Dataset(uri=str(tmp_path / "quarantine")),
        dsl.Artifact(uri=str(tmp_path / "report")),
        dsl.Metrics(uri=str(tmp_path / "m")),
    )
    fuse.python_func(
        labels=dsl.Dataset(uri=str(tiny_fusion_inputs["labels"])),
        engagement=dsl.Dataset(uri=str(tiny_fusion_inputs["engagement"])),
        training_lists=lists,
        quarantine=quarantine,
        report=report,
        metrics=metrics,
        config="local",
        overrides=tiny_overrides + ["fusion.preset=engagement_only"],
    )
    table = validate(read_table(lists.path), "training_lists").accepted
    assert set(table["source"].to_pylist()) <= {"impression", "random"}
    assert lists.metadata["preset"] == "engagement_only" and lists.metadata["max_teacher"] == 0
    written = json.loads((tmp_path / "report").read_text())
    assert written["rows"] == table.num_rows == lists.metadata["rows"]
    # the quarantine is an output of its own and the report counts every input row
    assert written["quarantine_uri"] == quarantine.path
    counts = written["inputs"]["engagement"]
    assert counts["rows_in"] == counts["accepted"] + counts["quarantined"]
    assert read_table(quarantine.path).num_rows == counts["quarantined"]
    assert quarantine.metadata["quarantined_engagement"] == counts["quarantined"]


def test_fuse_component_in_kfp_local(tiny_fusion_inputs, tiny_overrides, kfp_local):

    @dsl.pipeline(name="fuse-only")
    def pipeline(overrides: list):
        labels = dsl.importer(artifact_uri=str(tiny_fusion_inputs["labels"]), artifact_class=dsl.Dataset)
        engagement = dsl.importer(artifact_uri=str(tiny_fusion_inputs["engagement"]), artifact_class=dsl.Dataset)
        fuse(labels=labels.output, engagement=engagement.output, overrides=overrides)

    run = pipeline(overrides=tiny_overrides)
    task_outputs = list(kfp_local.glob("fuse-only-*/fuse/training_lists"))
    assert run is not None and len(task_outputs) == 1
    table = validate(read_table(str(task_outputs[0])), "training_lists").accepted
    assert {"impression", "under_impression", "random"} <= set(table["source"].to_pylist())
