"""The Spark image: the extraction on its spark engine (local[1], as the CLI and as the
SparkApplication's driver runs it) gives the report and tables DuckDB gives on the host, as
the image's unprivileged user; the image has Java 17, no torch, and the main file the
SparkApplication names."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_engines import BOT_RULES, _assert_same_table, _comparable, mixed_logs  # noqa: F401 (a fixture)
from unisup.config import load_config
from unisup.logs import extract_logs_with_holdout

pytestmark = pytest.mark.docker

# the same config on both sides but for the engine (the report holds it)
OVERRIDES = [*BOT_RULES, "extraction.holdout_days=1", "extraction.estimate_propensities=false"]
# (the default driver memory, 2g: with 1g the JVM ran out of heap on the plans' text now and then)
OVERRIDES += ["extraction.spark_master=local[1]"]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def _readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def inputs(mixed_logs, crossing_catalog, tmp_path):  # noqa: F811 (the fixture imported above)
    """The mixed logs and their catalog in a folder the image's user reads, an output folder it writes."""
    root = tmp_path / "mounted"
    shutil.copytree(mixed_logs, root / "logs")
    shutil.copy(crossing_catalog, root / "products.parquet")
    _readable(root)
    (root / "spark").mkdir(mode=0o777)
    (root / "spark").chmod(0o777)
    return root


def _duckdb_on_the_host(root: Path) -> tuple[dict, dict]:
    cfg = load_config("local", [f"data.catalog_uri={root / 'products.parquet'}", *OVERRIDES]).extraction
    out = root / "duckdb"
    return extract_logs_with_holdout(
        str(root / "logs"), str(out / "e.parquet"), str(out / "h.parquet"), cfg, str(root / "products.parquet"),
        report_uri=str(out / "report.json"),
    )  # fmt: skip


def _extract_in_the_image(image: str, root: Path, *command: str) -> subprocess.CompletedProcess:
    out = root / "spark"
    args = ["--config", "local", "--logs", str(root / "logs"), "--out", str(out / "e.parquet")]
    args += ["--holdout-out", str(out / "h.parquet"), "--report", str(out / "report.json")]
    for item in [f"data.catalog_uri={root / 'products.parquet'}", *OVERRIDES]:
        args += ["-o", item]
    args += ["-o", "extraction.engine=spark"]
    # the same paths inside as outside, so the reports name the same files
    return docker("run", "--rm", "--volume", f"{root}:{root}", image, *command, "extract-logs", *args, check=False)


def _assert_same_as_duckdb(root: Path, run: subprocess.CompletedProcess) -> dict:
    logged = [line for line in (run.stdout + run.stderr).splitlines() if " INFO " not in line]
    assert run.returncode == 0, "\n".join(logged)[-4000:]
    report = json.loads((root / "spark" / "report.json").read_text())
    duck, duck_held_out = _duckdb_on_the_host(root)
    assert report["config"]["engine"] == "spark" and report["rows_in"] > 0 and report["rows_quarantined"] > 0
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"]
    assert f"rows in {report['rows_in']} = accepted {report['rows_accepted']}" in run.stdout
    assert _comparable(report) == _comparable(duck)
    for name in ("e.parquet", "e.quarantine.parquet", "h.parquet", "h.quarantine.parquet"):
        _assert_same_table(str(root / "duckdb" / name), str(root / "spark" / name))
    assert duck_held_out["rows_in"] > 0
    return report


def test_the_cli_in_the_spark_image_extracts_what_duckdb_does_on_the_host(spark_image, inputs):
    report = _assert_same_as_duckdb(inputs, _extract_in_the_image(spark_image, inputs, "unisup"))
    assert report["bot_users"] >= 1
    # written by the image's user, not root
    assert (inputs / "spark" / "report.json").stat().st_uid == 10001


def test_the_driver_entrypoint_runs_the_main_file_the_application_names(spark_image, inputs):
    """What the Spark Operator's driver pod runs: spark-submit on local:///opt/unisup/unisup/cli.py."""
    main_file = load_config("cluster").extraction.spark_main_application_file
    # spark-submit starts the JVM before the CLI runs: its heap is the application's driver memory (2g)
    memory = load_config("cluster").extraction.spark_driver_memory
    driver = ["driver", "--master", "local[1]", "--driver-memory", memory, main_file]
    run = _extract_in_the_image(spark_image, inputs, *driver)
    _assert_same_as_duckdb(inputs, run)


def test_the_image_has_java_17_and_the_extraction_without_torch(spark_image):
    out = docker("run", "--rm", spark_image, "sh", "-c", "id -u && java -version 2>&1 && python -c '"
                 "import importlib.util as u, unisup.cli, unisup.logs, pyspark, sqlglot; "
                 "print(pyspark.__version__, sqlglot.__version__, u.find_spec(\"torch\") is None)'")  # fmt: skip
    uid, java, *_, versions = out.stdout.strip().splitlines()
    assert uid != "0" and 'version "17.' in java
    assert versions == "4.3.0 30.30.0 True"
    assert docker("run", "--rm", spark_image, "unisup", "extract-logs", "--help").stdout.startswith("usage:")
