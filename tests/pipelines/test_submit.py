"""The pure parts of pipelines/submit.py: reading a compiled package, typing parameters,
version names and schedules; bad arguments stop before any server is contacted."""

import pytest
from kfp import compiler, dsl
from kfp.dsl import Dataset

from components.shards import split_shards
from pipelines.submit import SubmitError, check_cron, load_package, main, parse_params


@dsl.pipeline(name="tiny-submit")
def tiny(table_uri: str, num_shards: int = 2, fraction: float = 0.5, dry: bool = False):
    source = dsl.importer(artifact_uri=table_uri, artifact_class=Dataset)
    split_shards(table=source.output, key_column="query", num_shards=num_shards)


@pytest.fixture(scope="module")
def package_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("submit") / "tiny.yaml"
    compiler.Compiler().compile(tiny, str(path))
    return path


def test_load_package_reads_name_parameters_and_a_content_version(package_path, tmp_path):
    package = load_package(package_path)
    assert package.name == "tiny-submit"
    assert package.parameters == {
        "table_uri": "STRING",
        "num_shards": "NUMBER_INTEGER",
        "fraction": "NUMBER_DOUBLE",
        "dry": "BOOLEAN",
    }
    assert package.version_name == f"tiny-submit-{package.digest[:12]}"
    assert load_package(package_path).version_name == package.version_name
    changed = tmp_path / "changed.yaml"
    changed.write_text(package_path.read_text() + "\n# edited\n")
    assert load_package(changed).version_name != package.version_name
    with pytest.raises(SubmitError, match="make compile"):
        load_package(tmp_path / "missing.yaml")


def test_parse_params_converts_and_checks(package_path):
    package = load_package(package_path)
    params = parse_params(["num_shards=8", "fraction=1", "dry=true", "table_uri=gs://b/pairs.parquet"], package)
    assert params == {
        "num_shards": 8,
        "fraction": 1.0,
        "dry": True,
        "table_uri": "gs://b/pairs.parquet",
    }
    assert isinstance(params["fraction"], float)
    with pytest.raises(SubmitError, match="no such parameter; it has: dry, fraction, num_shards, table_uri"):
        parse_params(["shards=3"], package)
    with pytest.raises(SubmitError, match="expected number_integer"):
        parse_params(["num_shards=many"], package)
    with pytest.raises(SubmitError, match="expected name=value"):
        parse_params(["num_shards"], package)


def test_cron_needs_six_fields():
    assert check_cron("0 0 3 * * *") == "0 0 3 * * *"
    with pytest.raises(SubmitError, match="six cron fields"):
        check_cron("0 3 * * *")


def test_main_rejects_bad_arguments_before_contacting_the_server(package_path, capsys):
    host = "http://127.0.0.1:9"  # nothing listens: reaching the client would fail differently
    assert main(["--host", host, "--package", str(package_path), "--param", "nope=1"]) == 2
    assert "no such parameter" in capsys.readouterr().err
    assert main(["--host", host, "--package", str(package_path), "--schedule", "0 3 * * *"]) == 2
    assert "six cron fields" in capsys.readouterr().err


class RecordingClient:
    """The kfp.Client calls submit makes, recorded; the server assigns ids as KFP's does."""

    calls: list = []

    def __init__(self, host, namespace):
        self.calls.clear()

    def get_pipeline_id(self, name):
        return None

    def upload_pipeline(self, path, pipeline_name):
        self.calls.append(("upload_pipeline", pipeline_name))
        return type("Pipeline", (), {"pipeline_id": "pipeline-uuid"})

    def list_pipeline_versions(self, pipeline_id, page_size):
        return type("Versions", (), {"pipeline_versions": []})

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id):
        self.calls.append(("upload_pipeline_version", pipeline_version_name))
        return type("Version", (), {"pipeline_version_id": "version-uuid"})

    def create_experiment(self, name, namespace):
        return type("Experiment", (), {"experiment_id": "experiment-uuid"})

    def create_recurring_run(self, **kwargs):
        self.calls.append(("create_recurring_run", kwargs))
        return type("Run", (), {"recurring_run_id": "job-uuid"})


def test_the_nightly_schedule_names_the_compiled_pipeline_and_its_parameters(monkeypatch, capsys):
    """The nightly run is created through the KFP API, on the ids the upload of the compiled
    unified_supervision pipeline returns; every parameter it sets is one of that pipeline's."""
    import kfp

    from pipelines.submit import COMPILED, load_schedule

    package = load_package(COMPILED / "unified_supervision.yaml")
    schedule = load_schedule(COMPILED.parent / "schedules" / "nightly.yaml")
    assert schedule.cron == "0 0 3 * * *" and schedule.max_concurrency == 1 and schedule.no_catchup
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    args = ["--host", "http://kfp", "--schedule-file", str(COMPILED.parent / "schedules" / "nightly.yaml")]
    assert main([*args, "--param", "shard_count=16"]) == 0
    (_, name), (_, version), (_, run) = RecordingClient.calls
    assert name == package.name == "unified-supervision" and version == package.version_name
    assert (run["pipeline_id"], run["version_id"], run["cron_expression"]) == (
        "pipeline-uuid",
        "version-uuid",
        "0 0 3 * * *",
    )
    assert run["params"] == {
        "config": "cluster",
        "log_end_date": "[[ScheduledTime.2006-01-02]]",
        "shard_count": 16,
    }
    assert "recurring run job-uuid" in capsys.readouterr().out


def test_a_bad_schedule_file_stops_before_the_server(tmp_path, package_path, capsys):
    host = "http://127.0.0.1:9"
    for text, message in (
        ("parameters: {}\n", "cron required"),
        ("cron: '0 3 * * *'\n", "six cron fields"),
        ("cron: '0 0 3 * * *'\nparameters: {nope: 1}\n", "no such parameter"),
        ("cron: '0 0 3 * * *'\nenabled: true\n", "expected the keys"),
    ):
        path = tmp_path / "schedule.yaml"
        path.write_text(text)
        assert main(["--host", host, "--package", str(package_path), "--schedule-file", str(path)]) == 2
        assert message in capsys.readouterr().err
