import pytest

from unisup.config import ConfigError, describe, load_config, to_dict


def test_profiles_load():
    local, cluster = load_config("local"), load_config("cluster")
    assert local.data.catalog_uri.startswith("data/sample/")
    assert cluster.data.catalog_uri.startswith("gs://")
    assert to_dict(local)["data"]["num_grades"] == 4


def test_overrides_are_typed():
    cfg = load_config("local", ["data.num_grades=5", "channels.bm25_k1=2", "data.split_fractions=[0.6, 0.2, 0.2]"])
    assert cfg.data.num_grades == 5 and cfg.channels.bm25_k1 == 2.0 and cfg.data.split_fractions == [0.6, 0.2, 0.2]

    # YAML 1.1 reads 3e-5 (no dot) as a string; a float key takes it as the number it means
    assert load_config("local", ["training.learning_rate=3e-5"]).training.learning_rate == 3e-5


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.num_grade=5", r"data.num_grade: unknown key; DataConfig has: catalog_uri"),
        ("data.num_grades=four", r"data.num_grades: expected an integer, got 'four'"),
        ("channels.top_k=true", r"channels.top_k: expected an integer, got True"),
        ("data.split_fractions=0.5", r"data.split_fractions: expected a list"),
        ("nosection.x=1", r"nosection: unknown key; Config has"),
        ("data.num_grades=''", r"data.num_grades: expected an integer, got ''"),
        ("training.learning_rate=fast", r"training.learning_rate: expected float, got 'fast'"),
        ("data.split_fractions=[0.5, 0.5", r"override 'data.split_fractions=\[0.5, 0.5': the value is not valid YAML"),
    ],
)
def test_bad_keys_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])


def test_an_empty_override_keeps_the_profile_and_quotes_set_the_empty_string():
    profile = load_config("cluster")
    kept = load_config("cluster", ["data.catalog_uri=", "labeling.triton_url= "])
    assert kept.data.catalog_uri == profile.data.catalog_uri.strip() != ""
    assert kept.labeling.triton_url == profile.labeling.triton_url
    assert load_config("local", ["index.search_params=''"]).index.search_params == ""


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  relevance_threshold: 1\n")
    assert load_config(good).data.relevance_threshold == 1


def test_every_key_has_help():
    rows = describe()
    assert rows and all(help_text for _, _, help_text in rows)


@pytest.mark.parametrize("value", ["2024-03-06", "2024-13-01", "2024-03-06 10:00:00"])
def test_dates_in_overrides_stay_strings(value):
    cfg = load_config("local", [f"extraction.start_date={value}", f"simulator.start_date={value}"])
    assert cfg.extraction.start_date == value and cfg.simulator.start_date == value


def test_dates_in_files_stay_strings(tmp_path):
    path = tmp_path / "dated.yaml"
    path.write_text("extraction:\n  start_date: 2024-03-06\n  end_date: 2024-03-08\n")
    cfg = load_config(path)
    assert (cfg.extraction.start_date, cfg.extraction.end_date) == ("2024-03-06", "2024-03-08")
