"""The push component: its function directly, and through kfp.local."""

import dataclasses
import json

import pytest
from kfp import dsl

from components.push import push
from unisup.promotion import NotBlessedError


@pytest.fixture(scope="module")
def candidate(tiny_encoder_path, tiny_overrides, tmp_path_factory):
    """A tiny bi-encoder, its index and two evaluations of it (``blessed/``, against itself;
    ``unblessed/``, also against BM25, which it loses to), each with its bound blessing."""
    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.config import load_config
    from unisup.evaluation import run_evaluation
    from unisup.index import build_catalog_index

    root = tmp_path_factory.mktemp("push_component")
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16)
    model = str(save_biencoder(tower, tower, root / "model"))
    settings = [f"index.work_dir={root / 'shards'}", "index.factory=Flat", "index.search_params=''"]
    cfg = load_config("local", tiny_overrides + settings + ["evaluation.n_bootstrap=50"])
    build_catalog_index(model, str(root / "index"), cfg, progress=False)
    for name, channels in (("blessed", []), ("unblessed", ["bm25"])):
        evaluation = dataclasses.replace(cfg.evaluation, baseline_channels=channels)
        run_evaluation(
            dataclasses.replace(cfg, evaluation=evaluation),
            model,
            str(root / "index"),
            str(root / name),
            [("same", model, str(root / "index"))],
        )
    return root


def _overrides(tiny_overrides, serving):
    return tiny_overrides + [
        f"promotion.model_repository={serving / 'triton'}",
        f"promotion.index_root={serving / 'indexes'}",
        f"promotion.config_root={serving / 'config'}",
        "promotion.control_model_uri=gs://prod/model/1",
        "promotion.control_index_uri=gs://prod/index/1",
        "promotion.treatment_traffic=0.25",
    ]


def test_push_function_promotes_and_refuses_unblessed(candidate, tiny_overrides, tmp_path):
    out = dsl.Artifact(uri=str(tmp_path / "experiment_config"))
    args = {
        "model": dsl.Model(uri=str(candidate / "model")),
        "index": dsl.Artifact(uri=str(candidate / "index")),
        "config": "local",
        "overrides": _overrides(tiny_overrides, tmp_path / "serving"),
    }
    blessing = dsl.Artifact(uri=str(candidate / "blessed" / "blessing.json"))
    push.python_func(blessing=blessing, experiment_config=out, **args)
    config = json.loads((tmp_path / "experiment_config").read_text())
    assert config["version"] == 1 and config["treatment_traffic"] == 0.25
    assert out.metadata["version"] == 1 and out.metadata["model_version"] == 1
    assert out.metadata["served_model_uri"] == str(tmp_path / "serving" / "triton" / "query_encoder" / "1")
    assert json.loads(out.metadata["promotion"])["treatment_traffic"] == 0.25
    assert (tmp_path / "serving" / "triton" / "query_encoder" / "1" / "model.py").exists()

    with pytest.raises(NotBlessedError, match="not blessed.*vs bm25"):
        push.python_func(
            blessing=dsl.Artifact(uri=str(candidate / "unblessed" / "blessing.json")),
            experiment_config=dsl.Artifact(uri=str(tmp_path / "again")),
            **args,
        )
    assert not (tmp_path / "serving" / "triton" / "query_encoder" / "2").exists()


def test_push_component_in_kfp_local(candidate, tiny_overrides, tmp_path, kfp_local):
    serving = tmp_path / "serving"

    @dsl.pipeline(name="push-only")
    def pipeline(overrides: list):
        blessing = dsl.importer(artifact_uri=str(candidate / "blessed" / "blessing.json"), artifact_class=dsl.Artifact)
        model = dsl.importer(artifact_uri=str(candidate / "model"), artifact_class=dsl.Model)
        index = dsl.importer(artifact_uri=str(candidate / "index"), artifact_class=dsl.Artifact)
        push(blessing=blessing.output, model=model.output, index=index.output, overrides=overrides).set_caching_options(
            False
        )

    pipeline(overrides=_overrides(tiny_overrides, serving))
    pipeline(overrides=_overrides(tiny_overrides, serving))
    versions = sorted(p.name for p in (serving / "config" / "experiments" / "unisup-retrieval").glob("v*.json"))
    assert versions == ["v0001.json", "v0002.json"]
    [first, second] = sorted(kfp_local.glob("push-only-*/push/experiment_config"))
    assert [json.loads(p.read_text())["version"] for p in (first, second)] == [1, 2]
    assert json.loads(second.read_text())["treatment_index_uri"].endswith("indexes/query_encoder/2")
