"""The unified_supervision pipeline with every component in its image (built by the ``images``
fixture): kfp.local.DockerRunner runs each task in a container: extraction, teachers, labeling
through a tritonserver started inside the labeling container, fusion, training, index,
evaluation, and the push to a GCS emulator that the containers reach over the host's network."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from kfp import local

from pipelines.unified_supervision import unified_supervision
from tests.pipelines.test_local_run import check_run, tiny_config
from unisup import storage

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def test_pipeline_runs_in_the_images(images, tmp_path, tiny_sample, tiny_encoder_path, gcs_emulator):
    # Only the pipeline root is mounted into the containers (at the same path): inputs go there.
    root = tmp_path / "root"
    inputs = root / "inputs"
    shutil.copytree(tiny_sample["dir"], inputs / "sample")
    shutil.copytree(tiny_encoder_path, inputs / "encoder")
    overrides = [
        f"data.catalog_uri={inputs / 'sample' / 'products.parquet'}",
        f"data.judgments_uri={inputs / 'sample' / 'judgments.csv'}",
        f"data.split_uri={inputs / 'sample' / 'split.json'}",
        f"channels.dense_model={inputs / 'encoder'}",
        f"channels.cache_dir={inputs / 'embedding_cache'}",
    ]
    config = tiny_config(inputs / "tiny.yaml", overrides, str(inputs / "encoder"), inputs)
    for path in [root, *root.rglob("*")]:  # the images run as an unprivileged user
        path.chmod(0o777 if path.is_dir() else 0o666)
    serving = f"gs://{gcs_emulator}/serving"
    local.init(
        runner=local.DockerRunner(
            network_mode="host", environment={"STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
        ),
        pipeline_root=str(root),
    )
    unified_supervision(
        config=config,
        catalog_uri=str(inputs / "sample" / "products.parquet"),
        judgments_uri=str(inputs / "sample" / "judgments.csv"),
        split_uri=str(inputs / "sample" / "split.json"),
        extraction_engine="duckdb",
        shard_count=2,
        labeling_backend="triton_local",
        max_epochs=1,
        max_steps=2,
        faiss_factory="Flat",
        faiss_search_params="",
        gate_min_delta_ci_low=-1e9,
        gate_max_grade0_increase=1.0,
        gate_max_engagement_drop=1.0,
        serving_model_repository=f"{serving}/models",
        serving_index_root=f"{serving}/indexes",
        experiment_config_root=f"{serving}/experiments",
        control_model_uri=str(root / "control" / "model"),
        control_index_uri=str(root / "control" / "index"),
    )
    run = next(root.glob("unified-supervision-*"))
    check_run(run, str(inputs / "sample" / "judgments.csv"))
    labeling = json.loads((next(run.glob("merge-shards/merged")) / "report.json").read_text())
    # each labeling shard was served by the tritonserver its own container started
    assert len(labeling["backend"]) == 2
    assert all(backend.startswith("triton_local (tritonserver at") for backend in labeling["backend"])
    pushed = storage.list_prefix(serving + "/")
    assert any(uri.endswith("/model.py") for uri in pushed), pushed
    assert any("/experiments/" in uri for uri in pushed) and any("/indexes/" in uri for uri in pushed)
