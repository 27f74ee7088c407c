"""Compile every pipeline with the real KFP compiler: the committed YAML must be current,
and the compiled specs must carry what the project promises (sharding, the blessing gate,
no cache on push, one image constant, GPU placement, parameters in the UI)."""

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from components._image import COMPONENTS_IMAGE, TRAINER_IMAGE
from components._k8s import GCP_KEY_MOUNT, GCP_KEY_SECRET
from pipelines.compile import COMPILED, compile_all, pipelines
from unisup.config import Config, load_config, parse_yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """name -> (pipeline spec, platform spec) of a fresh compile."""
    out = tmp_path_factory.mktemp("compiled")
    specs = {}
    for path in compile_all(out):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        specs[path.stem] = (docs[0], docs[1] if len(docs) > 1 else {})
        specs[path.stem + ":text"] = path.read_text()
    return specs


def test_committed_yaml_is_current(compiled):
    for name in pipelines():
        committed = COMPILED / f"{name}.yaml"
        assert committed.exists(), f"{committed} missing: run `make compile`"
        assert committed.read_text() == compiled[name + ":text"], f"{committed} is stale: run `make compile`"


def all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline and its sub-DAGs, by its display name (taskInfo.name)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {task["taskInfo"]["name"]: task for dag in dags for task in dag["tasks"].values()}


def test_every_executor_runs_the_versioned_image(compiled):
    for name in pipelines():
        executors = compiled[name][0]["deploymentSpec"]["executors"].values()
        images = {e["container"]["image"] for e in executors if "container" in e}
        assert images <= {COMPONENTS_IMAGE, TRAINER_IMAGE}, images
        assert TRAINER_IMAGE in images


def test_labeling_fans_out_over_a_shard_count_parameter(compiled):
    for name in pipelines():
        spec = compiled[name][0]
        tasks = all_tasks(spec)
        loop = tasks["label-shards"]
        assert "parameterIterator" in loop and "split-shards" in loop["dependentTasks"]
        split_inputs = tasks["split-shards"]["inputs"]["parameters"]
        assert split_inputs["num_shards"]["componentInputParameter"] == "shard_count"
        assert "merge-shards" in tasks and "label" in tasks


def test_extraction_is_one_task_on_an_engine_parameter(compiled):
    for name in pipelines():
        tasks = all_tasks(compiled[name][0])
        given = ("simulate-logs", "locate-logs", "read-given-logs")
        extraction = [key for key in tasks if "log" in key and key not in given]
        assert extraction == ["extract-logs"], extraction
        engine = tasks["extract-logs"]["inputs"]["parameters"]["engine"]
        assert engine["componentInputParameter"] == "extraction_engine"


def test_push_is_gated_on_the_blessing_and_never_cached(compiled):
    spec = compiled["unified_supervision"][0]
    tasks = all_tasks(spec)
    gate = tasks["blessed"]
    assert "evaluate" in gate["dependentTasks"]
    condition = gate["triggerPolicy"]["condition"]
    assert "pipelinechannel--evaluate-Output" in condition and "true" in condition
    push = tasks["push"]
    assert not push.get("cachingOptions", {}).get("enableCache", False)
    assert tasks["evaluate"]["cachingOptions"]["enableCache"] is True


def test_gpu_stages_are_placed_on_gpu_nodes(compiled):
    spec, platform = compiled["unified_supervision"]
    executors = spec["deploymentSpec"]["executors"]
    config = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = [name for name, e in executors.items() if "accelerator" in e["container"].get("resources", {})]
    assert {"exec-train", "exec-build-index", "exec-train-teacher"} <= set(gpu)
    for name in gpu:
        assert executors[name]["container"]["image"] == TRAINER_IMAGE or name == "exec-train-teacher"
        assert config[name]["nodeSelector"]["labels"] and config[name]["tolerations"][0]["key"] == "nvidia.com/gpu"
    for name, e in executors.items():
        assert e["container"]["resources"]["memoryLimit"] > 0, f"{name} has no memory limit"


def test_every_task_mounts_the_optional_gcs_key_secret(compiled):
    for spec, platform in (compiled["unified_supervision"], compiled["ablation"]):
        config = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name in spec["deploymentSpec"]["executors"]:
            volume = config[name]["secretAsVolume"][0]
            assert volume["secretName"] == GCP_KEY_SECRET and volume["optional"] is True, name
            assert volume["mountPath"] == GCP_KEY_MOUNT


PARAMETER = re.compile(r"\{\{\$\.inputs\.parameters\['pipelinechannel--([\w-]+)'\]\}\}")


def task_overrides(spec: dict) -> dict[str, list[str]]:
    """Display name -> the override strings of that task, as compiled (with parameter placeholders)."""
    found = {}
    for name, task in all_tasks(spec).items():
        value = task.get("inputs", {}).get("parameters", {}).get("overrides", {})
        constant = value.get("runtimeValue", {}).get("constant")
        if constant is not None:
            found[name] = constant
    return found


def resolved(overrides: list[str], defaults: dict) -> list[str]:
    """The overrides with each pipeline parameter replaced by its default (loop items dropped)."""
    out = []
    for item in overrides:
        names = PARAMETER.findall(item)
        if all(n in defaults for n in names):
            out.append(PARAMETER.sub(lambda m: str(defaults[m.group(1)]), item))
    return out


def profile_keys(profile: str) -> dict[str, object]:
    """section.key -> value of every key the shipped profile sets."""
    text = resources.files("unisup").joinpath("profiles", f"{profile}.yaml").read_text()
    return {f"{section}.{key}": value for section, keys in parse_yaml(text).items() for key, value in keys.items()}


@pytest.mark.parametrize("profile", ["local", "quality", "cluster"])
@pytest.mark.parametrize("pipeline", ["unified_supervision", "ablation"])
def test_parameter_defaults_never_override_the_profile(compiled, pipeline, profile):
    """A run started with only ``config`` set (the nightly run on ``cluster``) gets the profile's
    data, serving locations, Triton address and budget, not the sample's."""
    spec = compiled[pipeline][0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue", "") for name, p in params.items()}
    expected = load_config(profile)
    keys = profile_keys(profile)
    for task, overrides in task_overrides(spec).items():
        cfg = load_config(profile, resolved(overrides, defaults))
        for key in keys:
            section, field = key.split(".")
            got, want = getattr(getattr(cfg, section), field), getattr(getattr(expected, section), field)
            assert got == want, f"{pipeline}/{task}: the default parameters change {key} of {profile}"
    assert defaults["max_epochs"] == 0 and defaults["labeling_backend"] == defaults["triton_url"] == ""
    train = all_tasks(spec)["train"]["inputs"]["parameters"]["max_epochs"]
    assert train["componentInputParameter"].endswith("max_epochs")


def test_numbers_default_to_the_configuration_defaults(compiled):
    params = compiled["unified_supervision"][0]["root"]["inputDefinitions"]["parameters"]
    cfg = Config()
    defaults = {
        "escalate_rule": cfg.labeling.escalate_rule,
        "max_prob_threshold": cfg.labeling.max_prob_threshold,
        "boundary_margin": cfg.labeling.boundary_margin,
        "fusion_preset": cfg.fusion.preset,
        "prior_weight": cfg.fusion.prior_weight,
        "engagement_weight": cfg.fusion.engagement_weight,
        "hard_negative_weight": cfg.fusion.hard_negative_weight,
        "max_steps": cfg.training.max_steps,
        "faiss_factory": cfg.index.factory,
        "faiss_search_params": cfg.index.search_params,
        "gate_metric": cfg.evaluation.gate_metric,
        "gate_min_delta_ci_low": cfg.evaluation.gate_min_delta_ci_low,
        "gate_max_grade0_increase": cfg.evaluation.gate_max_grade0_increase,
        "gate_max_engagement_drop": cfg.evaluation.gate_max_engagement_drop,
        "experiment_id": cfg.promotion.experiment_id,
        "treatment_traffic": cfg.promotion.treatment_traffic,
    }
    for name, value in defaults.items():
        assert params[name]["defaultValue"] == value, f"{name}: pipeline default differs from the config's"


STAGE_PARAMETERS = {
    "fuse": {"catalog_uri", "judgments_uri", "split_uri", "fusion_preset", "prior_weight", "engagement_weight"}
    | {"hard_negative_weight"},
    "train": {"catalog_uri", "judgments_uri", "split_uri", "max_steps"},
    "build-index": {"catalog_uri", "judgments_uri", "split_uri", "faiss_factory", "faiss_search_params"},
}


def test_each_training_task_reads_only_its_own_parameters(compiled):
    """Its cache key holds nothing else: a changed gate, push target or index re-runs nothing upstream."""
    spec = compiled["unified_supervision"][0]
    overrides = task_overrides(spec)
    for task, allowed in STAGE_PARAMETERS.items():
        for name in (task, f"{task}-baseline"):
            used = {p for item in overrides[name] for p in PARAMETER.findall(item)}
            assert used <= allowed | {"baseline_preset"}, f"{name} reads {sorted(used - allowed)}"
    gates = {p for item in overrides["evaluate"] for p in PARAMETER.findall(item)}
    assert {"gate_metric", "baseline_preset"} <= gates and not any(p.startswith("serving") for p in gates)


@pytest.mark.parametrize("pipeline", ["unified_supervision", "ablation"])
def test_every_parameter_is_described_in_the_ui(compiled, pipeline):
    spec = compiled[pipeline][0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    missing = [name for name, p in params.items() if len(p.get("description", "")) < 10]
    assert not missing, f"parameters without a description: {missing}"
    description = spec["pipelineInfo"]["description"]
    assert description.endswith(".") and len(description) > 40


def test_ablation_trains_presets_in_parallel_and_compares_them(compiled):
    spec = compiled["ablation"][0]
    tasks = all_tasks(spec)
    presets = tasks["presets"]
    assert "parameterIterator" in presets
    assert presets["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--presets"
    assert {"fuse", "train", "build-index", "evaluate"} <= set(tasks)
    loop_key = next(k for k, task in spec["root"]["dag"]["tasks"].items() if task["taskInfo"]["name"] == "presets")
    assert tasks["compare-runs"]["dependentTasks"] == [loop_key]
    default = spec["root"]["inputDefinitions"]["parameters"]["presets"]["defaultValue"]
    assert {"unified", "engagement_only"} <= set(default)


def test_ci_workflow_tests_compiles_checks_and_publishes():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["test-and-compile"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "make test" in runs and "make compile" in runs
    assert "git diff --exit-code -- pipelines/compiled" in runs
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "pipelines/compiled/*.yaml"


def test_resumable_tasks_retry_with_backoff_and_labeling_is_bounded(compiled):
    """Retries go to the tasks that resume from their own work, and to no task with side effects."""
    spec = compiled["unified_supervision"][0]
    tasks = all_tasks(spec)
    retried = {name for name, task in tasks.items() if "retryPolicy" in task}
    assert retried == {
        "train-teacher",
        "label",
        "train",
        "train-baseline",
        "build-index",
        "build-index-baseline",
    }, retried
    assert tasks["label"]["retryPolicy"] == {
        "backoffDuration": "60s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "3600s",
        "maxRetryCount": 3,
    }
    loops = [t for t in tasks.values() if "parameterIterator" in t]
    assert [t["iteratorPolicy"]["parallelismLimit"] for t in loops] == [4]
    assert tasks["locate-logs"]["cachingOptions"].get("enableCache") is not True  # its prefix can change
