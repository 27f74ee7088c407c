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
