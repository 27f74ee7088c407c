import json

import pytest

from unisup.cli import build_parser, main

STAGES = ["train-teacher", "label", "fuse", "train", "build-index", "evaluate", "push", "rollback", "extract-logs"]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("config", "data", "channels"):
        assert name in out


def test_validate_reports_accounting(tmp_path, capsys):
    path = tmp_path / "judgments.csv"
    path.write_text("query,product_id,rating\ntv,3920564,3\ntv,3920564,2\nhub,2101957,9\n")
    quarantine = tmp_path / "q.parquet"
    assert main(["data", "validate", "judgments", str(path), "--quarantine", str(quarantine)]) == 0
    out = capsys.readouterr().out
    assert "rows in 3 = accepted 1 + quarantined 2" in out and quarantine.exists()


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "judgments.csv"
    path.write_text("query,product_id\ntv,1\n")
    assert main(["data", "validate", "judgments", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unisup: error: judgments (") and "column 'rating'" in err and "Traceback" not in err


def test_bad_config_key(capsys):
    assert main(["config", "show", "-o", "data.nope=1"]) == 2
    assert "data.nope: unknown key" in capsys.readouterr().err


def test_channels_on_tiny_sample(tiny_overrides, tmp_path, capsys):
    args = ["channels", "--split", "train", "--json", str(tmp_path / "c.json")]
    for item in tiny_overrides:
        args += ["-o", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "bm25" in out and "rrf(bm25,minilm)" in out
    figures = json.loads((tmp_path / "c.json").read_text())
    assert 0 < figures["bm25"]["metrics"]["ndcg@10"] <= 1


def test_every_stage_name_is_reserved_for_a_subcommand():
    """Stage subcommands that exist use the agreed names (no near-miss spellings)."""
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands <= set(STAGES) | {"config", "data", "channels", "demo"}


@pytest.mark.spark
def test_extract_logs_on_either_engine(spark, crossing_logs, crossing_catalog, tmp_path, capsys):
    common = ["extract-logs", "--logs", crossing_logs, "-o", f"data.catalog_uri={crossing_catalog}"]
    assert main(common + ["--out", str(tmp_path / "duckdb.parquet")]) == 0
    duckdb = capsys.readouterr().out
    assert main(common + ["--out", str(tmp_path / "spark.parquet"), "-o", "extraction.engine=spark"]) == 0
    on_spark = capsys.readouterr().out
    accounting = [line for line in duckdb.splitlines() if line.startswith("rows in")][0]
    assert accounting.split(" -> ")[0] in on_spark
    quarantined = [line for line in duckdb.splitlines() if "quarantined " in line and line.startswith("  ")]
    assert quarantined and all(line in on_spark.splitlines() for line in quarantined)


def test_only_the_projects_errors_become_one_line(monkeypatch, capsys):
    """A UnisupError (bad input, a bad setting) is one line and exit 2; a bug keeps its traceback."""
    import unisup.cli as cli
    from unisup.errors import InputError

    def refuse(_args):
        raise InputError("judgments.csv: rows 3, 4: not a grade")

    def bug(_args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli, "_config_keys", refuse)
    assert main(["config", "keys"]) == 2
    assert capsys.readouterr().err == "unisup: error: judgments.csv: rows 3, 4: not a grade\n"
    monkeypatch.setattr(cli, "_config_keys", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["config", "keys"])


def test_a_missing_file_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.parquet"
    assert main(["data", "validate", "catalog", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unisup: error: ") and str(missing) in err and len(err.splitlines()) == 1


def test_bad_simulator_settings_fail_before_the_catalog_is_read(monkeypatch, tmp_path, capsys):
    import unisup.data.dataset

    def must_not_load(*_args, **_kwargs):
        raise AssertionError("the catalog was loaded before the settings were checked")

    monkeypatch.setattr(unisup.data.dataset, "load_dataset", must_not_load)
    out = tmp_path / "logs"
    assert main(["data", "simulate-logs", "--out", str(out), "-o", "simulator.num_days=-1"]) == 2
    assert "simulator.num_days=-1" in capsys.readouterr().err
    assert not out.exists()


def test_train_teacher_with_audit_writes_the_audit_and_the_card(tiny_teacher_overrides, tmp_path, capsys):
    """``unisup train-teacher --audit``: the stages, the audit file and table, and a model card
    that carries the audit, as the component writes them."""
    overrides = [arg for o in tiny_teacher_overrides for arg in ("-o", o)]
    repository, audit_file = tmp_path / "teachers", tmp_path / "audit.json"
    assert main(["train-teacher", "--out", str(repository), "--audit", str(audit_file), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "fast: " in printed and "precise: " in printed and "cascade" in printed
    audit = json.loads(audit_file.read_text())
    assert set(audit["stages"]) == {"fast", "precise"} and "gate" in audit
    card = (repository / "README.md").read_text()
    assert "## Quality audit" in card and f"audit_passed: {str(audit['gate']['passed']).lower()}" in card
