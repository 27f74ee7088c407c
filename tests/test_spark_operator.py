"""The SparkApplication of the extraction on a cluster: valid against the Spark Operator's
CRD schema, sized by the config, running the CLI on the spark engine with the cluster's master
in the image containers/Dockerfile.spark builds; its submission and the wait for its end."""

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from components._image import SPARK_IMAGE
from unisup.config import ConfigError, load_config
from unisup.spark_operator import (
    GROUP,
    IN_CLUSTER_MASTER,
    PLURAL,
    VERSION,
    SparkApplicationFailed,
    extraction_arguments,
    spark_application,
    submit_and_wait,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
SCHEMA = json.loads((MANIFESTS / "schemas" / "sparkapplication_v1beta2.json").read_text())


def _cfg(*overrides: str):
    return load_config("local", list(overrides)).extraction


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


def test_the_image_version_and_main_file_are_those_the_spark_image_is_built_with():
    template = yaml.safe_load((MANIFESTS / "spark" / "extract-logs.yaml").read_text())["spec"]
    for profile in ("local", "cluster"):
        cfg = load_config(profile).extraction
        assert cfg.spark_image == template["image"] == SPARK_IMAGE
        assert cfg.spark_main_application_file == template["mainApplicationFile"]
    pins = dict(
        s.split("==")
        for s in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["spark"]
    )
    assert cfg.spark_version == template["sparkVersion"] == pins["pyspark"]
    # the image links /opt/unisup/unisup to the installed package: the main file is the CLI module
    dockerfile = (REPO / "containers" / "Dockerfile.spark").read_text()
    assert re.search(r"ln -s \S+/site-packages/unisup\"? /opt/unisup/unisup", dockerfile)
    main_file = cfg.spark_main_application_file.removeprefix("local:///opt/unisup/")
    assert (REPO / main_file).is_file() and main_file == "unisup/cli.py"


class FakeCustomObjects:
    """A CustomObjectsApi that records the created object and answers each get with the next state."""

    def __init__(self, *states: tuple[str, str]):
        self.states, self.created, self.gets = list(states), [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        state, message = self.states[min(self.gets, len(self.states) - 1)]
        self.gets += 1
        body = self.created[0][4]
        assert name == body["metadata"]["name"] and namespace == body["metadata"]["namespace"]
        if not state:
            return {**body}
        return {
            **body,
            "status": {"applicationState": {"state": state, "errorMessage": message}, "sparkApplicationId": "spark-1"},
        }


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _submit(api, **wait):
    clock = FakeClock()
    app = spark_application("unisup-extract-logs-1", _cfg(), _arguments())
    return app, clock, lambda: submit_and_wait(app, api, clock=clock, sleep=clock.sleep, **wait)


def test_submit_creates_the_application_and_returns_its_status_when_completed():
    api = FakeCustomObjects(("", ""), ("SUBMITTED", ""), ("RUNNING", ""), ("COMPLETED", ""))
    app, clock, submit = _submit(api, poll_s=7.0)
    status = submit()
    assert api.created == [(GROUP, VERSION, "default", PLURAL, app)]
    assert status["applicationState"]["state"] == "COMPLETED" and status["sparkApplicationId"] == "spark-1"
    assert api.gets == 4 and clock.sleeps == [7.0, 7.0, 7.0]


def test_a_failed_application_raises_with_the_operators_message():
    api = FakeCustomObjects(("SUBMITTED", ""), ("RUNNING", ""), ("FAILED", "driver pod failed: OOMKilled"))
    _, clock, submit = _submit(api)
    with pytest.raises(
        SparkApplicationFailed, match="default/unisup-extract-logs-1 ended FAILED: driver pod failed: OOMKilled"
    ):
        submit()
    assert api.gets == 3 and len(clock.sleeps) == 2


def test_a_failed_submission_is_final_too():
    api = FakeCustomObjects(("SUBMISSION_FAILED", "failed to run spark-submit"))
    with pytest.raises(SparkApplicationFailed, match="ended SUBMISSION_FAILED: failed to run spark-submit"):
        _submit(api)[2]()
    assert api.gets == 1


def test_an_application_still_running_at_the_deadline_raises_after_polling_until_then():
    api = FakeCustomObjects(("SUBMITTED", ""), ("RUNNING", ""))
    _, clock, submit = _submit(api, timeout_s=60.0, poll_s=15.0)
    with pytest.raises(SparkApplicationFailed, match=r"still RUNNING after 60.0s"):
        submit()
    # polls at 0, 15, 30, 45, 60 (not past the deadline yet) and 75, which is
    assert clock.sleeps == [15.0] * 5 and api.gets == 6 and clock.now == 75.0
