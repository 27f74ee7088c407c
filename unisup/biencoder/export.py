"""Export the query tower into a Triton model repository (python backend) and serve it.

    <repository>/
      <name>/                     training.triton_model_name, e.g. query_encoder
        config.pbtxt              input "query" (BYTES, [1]), output "embedding" (FP32, [dim]),
                                  max_batch_size, dynamic_batching, instance_group
        <version>/
          model.py                copy of unisup/serving/templates/query_encoder_model.py
          query_tower/            the query tower (HF save_pretrained + tower.json)

The work of the served model is :class:`QueryEncoderService` (importable and testable
outside Triton): decode the BYTES queries of every request of a dynamic batch, embed
them in one forward pass, split the embeddings back per request.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unisup import storage
from unisup.config import TrainingConfig
from unisup.serving import QUERY_ENCODER_TEMPLATE, template
from unisup.serving.codec import decode_texts

MODEL_TEMPLATE = template(QUERY_ENCODER_TEMPLATE)
QUERY_INPUT = "query"
EMBEDDING_OUTPUT = "embedding"
TOWER_FOLDER = "query_tower"


class QueryEncoderService:
    """A loaded query tower that embeds whole dynamic batches."""

    def __init__(self, tower_dir: str | Path, device: str = "cpu"):
        from unisup.biencoder.tower import Tower

        self.tower = Tower.load(tower_dir, device)

    @property
    def dim(self) -> int:
        return self.tower.dim

    def embed_batches(self, requests: Sequence[np.ndarray]) -> list[np.ndarray]:
        """BYTES query arrays, one per request -> (n_i, dim) float32 embeddings per request,
        computed in one forward pass over all requests."""
        queries, sizes = [], []
        for array in requests:
            texts = decode_texts(array)
            queries.extend(texts)
            sizes.append(len(texts))
        if not queries:
            return [np.zeros((0, self.dim), dtype=np.float32) for _ in requests]
        vectors = self.tower.encode(queries, batch_size=len(queries))
        return np.split(vectors, np.cumsum(sizes)[:-1])


def model_config(
    name: str,
    dim: int,
    max_batch_size: int,
    queue_delay_us: int,
    instances: int,
    instance_kind: str = "KIND_CPU",
    python_paths: str = "",
) -> str:
    """The config.pbtxt text of the query-encoder model."""
    if instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"instance_kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}")
    return f'''name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{ name: "{QUERY_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "{EMBEDDING_OUTPUT}" data_type: TYPE_FP32 dims: [ {dim} ] }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [ {{ count: {instances} kind: {instance_kind} }} ]
parameters: {{ key: "python_paths" value: {{ string_value: "{python_paths}" }} }}
'''


def _next_version(model_dir: Path) -> int:
    versions = (
        [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()] if model_dir.exists() else []
    )
    return max(versions, default=0) + 1


def export_query_encoder(
    model_dir: str | Path,
    repository: str | Path,
    cfg: TrainingConfig,
    version: int | None = None,
    instance_kind: str = "KIND_CPU",
    python_paths: str = "",
) -> str:
    """Write the query tower of the bi-encoder folder ``model_dir`` as a new version of the
    query-encoder model in ``repository`` (local path or gs://); returns ``<name>/<version>``.

    Without ``version`` the next free version number is used (1 for a new model); earlier
    versions stay.
    """
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "biencoder.json").read_text())
    tower_dir = model_dir / manifest["query_tower"]
    name = cfg.triton_model_name
    with tempfile.TemporaryDirectory(prefix="unisup-qenc-") as tmp:
        remote = storage.is_gcs(str(repository))
        local = Path(tmp) if remote else Path(repository)
        if remote and version is None:
            prefix = storage.join(str(repository), name) + "/"
            heads = {uri[len(prefix) :].split("/", 1)[0] for uri in storage.list_prefix(prefix)}
            version = max((int(h) for h in heads if h.isdigit()), default=0) + 1
        target = local / name
        version = version or _next_version(target)
        version_dir = target / str(version)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        version_dir.mkdir(parents=True)
        shutil.copytree(tower_dir, version_dir / TOWER_FOLDER)
        shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
        (target / "config.pbtxt").write_text(
            model_config(
                name,
                int(manifest["dim"]),
                cfg.triton_max_batch_size,
                cfg.triton_queue_delay_us,
                cfg.triton_instances,
                instance_kind,
                python_paths,
            )
        )
        if remote:
            storage.upload_dir(local, str(repository))
    return f"{name}/{version}"
