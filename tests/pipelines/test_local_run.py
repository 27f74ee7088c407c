"""The unified_supervision pipeline end to end through kfp.local on the tiny sample with tiny
models: simulated logs, extraction, teachers, sharded labeling, fusion, training, index,
evaluation and, with gates that bless any candidate, the push."""

import json
from pathlib import Path

import pytest
import yaml

from pipelines.compile import COMPILED
from pipelines.demo import summary
from pipelines.local_view import StageView, planned_tasks
from pipelines.unified_supervision import unified_supervision
from unisup.data.tables import read_table

pytestmark = pytest.mark.e2e


def tiny_config(path, overrides: list[str], encoder: str, work) -> str:
    """A config YAML: the tiny sample and encoder, and small budgets for every stage."""
    settings = {}
    for item in overrides + [
        "simulator.num_requests=150",
        "simulator.channel_depth=5",
        "simulator.num_days=3",  # two training days and a held-out one
        "simulator.num_derived_queries=60",
        "training.max_epochs=1",
        "training.lists_per_batch=3",
        "training.items_per_list=6",
        "training.validation_distractors=20",
        "training.query_max_length=12",
        "training.item_max_length=16",
        f"training.encoder_path={encoder}",
        "teachers.max_train_pairs=64",
        "teachers.max_validation_pairs=32",
        # the tiny teachers may fall below the features-only baseline: the audit gate admits them here
        "teachers.audit_tolerance=2.0",
        "labeling.shard_size=256",
        "index.recall_queries=5",
        f"index.work_dir={work / 'index'}",
        "evaluation.n_bootstrap=50",
        "evaluation.cutoffs=[10]",
        "evaluation.depth=10",
        # tiny random teachers grade few items relevant: keep lists without a positive
        "fusion.require_positive=false",
        "fusion.min_list_size=2",
    ]:
        key, _, value = item.partition("=")
        section, name = key.split(".")
        settings.setdefault(section, {})[name] = yaml.safe_load(value)
    stage = {"base_model": encoder, "epochs": 1, "max_steps": 2, "batch_size": 8, "max_length": 16}
    settings["teachers"]["stages"] = [
        {"name": "features", "kind": "ordinal_features"},
        {"name": "precise", "stack_on": "features", **stage},
    ]
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def check_run(run: Path, judgments_uri: str) -> None:
    """Every record accounted for across the shards, a report, a blessing and the push; the data
    and the epochs those of the config file."""
    shards = sorted(run.glob("*/pick-shard/shard"))
    assert len(shards) == 2
    engagement = read_table(str(next(run.glob("extract-logs/engagement"))))
    extraction = json.loads(next(run.glob("extract-logs/report")).read_text())
    assert extraction["rows_in"] == extraction["rows_accepted"] + extraction["rows_quarantined"]
    labels = read_table(str(next(run.glob("merge-shards/merged")) / "labels.parquet"))
    report = json.loads((next(run.glob("merge-shards/merged")) / "report.json").read_text())
    assert sum(read_table(str(s)).num_rows for s in shards) == engagement.num_rows
    assert report["rows_in"] == engagement.num_rows == labels.num_rows + report["quarantined"]
    assert report["merged_shards"] == 2
    assert read_table(str(next(run.glob("merge-shards/merged_table")))).num_rows == labels.num_rows
    assert "<html" in next(run.glob("evaluate/report")).read_text().lower()
    # the same page with an .html name for a browser; the run named by its resolved id
    page = next(run.glob("evaluate/report_html/report.html")).read_text()
    assert page == next(run.glob("evaluate/report")).read_text() and "<b>unified</b>" in page
    settings = json.loads(next(run.glob("evaluate/results_json")).read_text())["settings"]
    assert settings["judgments_uri"] == judgments_uri
    trained = json.loads((run / "train" / "executor_output.json").read_text())["artifacts"]["model"]
    assert trained["artifacts"][0]["metadata"]["max_epochs"] == 1
    run_id = settings["run_id"]
    assert run_id and "{{" not in run_id and run_id in page
    blessing = json.loads(next(run.glob("evaluate/blessing")).read_text())
    assert blessing["blessed"] is True and blessing["gates"]["teacher_audit"]["passed"]
    # the engagement gate judged the held-out last day of the logs, which training never saw
    assert blessing["evidence"]["queries"]["engagement"] > 0
    assert any(r.startswith("engagement recall@") for r in blessing["reasons"])
    experiment = json.loads(next(run.glob("push/experiment_config")).read_text())
    assert experiment["version"] == 1 and experiment["treatment_traffic"] == 0.1


def test_pipeline_end_to_end(tmp_path, tiny_sample, tiny_overrides, tiny_encoder_path, capfd, kfp_local):
    config = tiny_config(tmp_path / "tiny.yaml", tiny_overrides, str(tiny_encoder_path), tmp_path)
    serving = tmp_path / "serving"
    root = kfp_local
    spec = next(d for d in yaml.safe_load_all((COMPILED / "unified_supervision.yaml").read_text()) if d)
    stages = planned_tasks(spec, loop_iterations=2, skipped=("read-given-logs",))
    capfd.readouterr()
    with StageView(root, tmp_path / "run.log", stages, poll_secs=0.5) as view:
        run_pipeline(config, serving)
    screen = capfd.readouterr().out
    run = next(root.glob("unified-supervision-*"))
    check_run(run, str(tiny_sample["judgments"]))
    assert list((serving / "models").rglob("model.py"))
    # the screen: one line per stage, k of n, and none of the executors' output, which is in the log
    assert len(stages) == 17 and len(view.finished) == 17
    # the first stage is either root (teacher training or log simulation): kfp.local picks the order
    assert "[17/17] push" in screen and "[ 1/17] " in screen and "executor" not in screen.lower()
    assert all(f"] {name}" in screen for name in stages.values())
    assert "executor" in (tmp_path / "run.log").read_text().lower()
    text = summary(run)
    assert "verdict: unified vs engagement_only, ndcg@10" in text and "BLESSED" in text


def run_pipeline(config: str, serving: Path) -> None:
    unified_supervision(
        # the data and the epochs come from the config file: those parameters are left empty
        config=config,
        shard_count=2,
        labeling_backend="inprocess",
        max_steps=2,
        faiss_factory="Flat",
        faiss_search_params="",
        gate_min_delta_ci_low=-1e9,
        gate_max_grade0_increase=1.0,
        gate_max_engagement_drop=1.0,
        serving_model_repository=str(serving / "models"),
        serving_index_root=str(serving / "indexes"),
        experiment_config_root=str(serving / "experiments"),
        control_model_uri=str(serving / "control" / "model"),
        control_index_uri=str(serving / "control" / "index"),
    )
