"""The SparkApplication of the extraction on a cluster: valid against the Spark Operator's
CRD schema, sized by the config, running the CLI on the spark engine with the cluster's master."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from unisup.config import ConfigError, load_config
from unisup.spark_operator import IN_CLUSTER_MASTER, extraction_arguments, spark_application

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
SCHEMA = json.loads((MANIFESTS / "schemas" / "sparkapplication_v1beta2.json").read_text())


def _cfg(*overrides: str):
    return load_config("local", ["extraction.spark_image=ghcr.io/unisup/spark:0.1.0", *overrides]).extraction


def _arguments():
    return extraction_arguments(
        "gs://logs/raw", "gs://runs/e", "gs://runs/h", "gs://runs/q", "gs://runs/r.json", "cluster",
        ["extraction.holdout_days=1"],
    )  # fmt: skip


def test_the_application_is_valid_and_sized_by_the_config():
    cfg = _cfg("extraction.spark_executor_instances=5", "extraction.spark_executor_memory=8g")
    app = spark_application("unisup-extract-logs-1", cfg, _arguments())
    jsonschema.validate(app, SCHEMA)
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster" and spec["image"] == cfg.spark_image
    assert spec["executor"]["instances"] == 5 and spec["executor"]["memory"] == "8g"
    assert spec["driver"]["serviceAccount"] == "spark" and app["metadata"]["namespace"] == "default"


def test_the_driver_runs_the_cli_on_the_spark_engine_with_the_cluster_master():
    args = _arguments()
    assert args[:2] == ["extract-logs", "--config"]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    assert overrides == [
        "extraction.holdout_days=1",
        "extraction.engine=spark",
        f"extraction.spark_master={IN_CLUSTER_MASTER}",
    ]
    assert args[args.index("--out") + 1] == "gs://runs/e" and args[args.index("--report") + 1] == "gs://runs/r.json"


def test_the_template_in_manifests_has_the_shape_the_builder_gives():
    template = yaml.safe_load((MANIFESTS / "spark" / "extract-logs.yaml").read_text())
    built = spark_application("unisup-extract-logs", _cfg(), template["spec"]["arguments"])
    assert set(built["spec"]) == set(template["spec"])
    assert (
        built["spec"]["driver"] == template["spec"]["driver"]
        and built["spec"]["sparkConf"] == template["spec"]["sparkConf"]
    )


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("Bad_Name", [], "expected lowercase letters"),
        ("ok", ["extraction.spark_image=''"], "a cluster needs a Spark image"),
    ],
)
def test_bad_names_and_a_missing_image_are_config_errors(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        spark_application(name, _cfg(*overrides), [])
