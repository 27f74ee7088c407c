"""Query-encoder export: repository layout, the batch logic outside Triton, and a real tritonserver."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from unisup.biencoder.export import QueryEncoderService, export_query_encoder
from unisup.biencoder.tower import PROJECTION_FILE, Tower, save_biencoder
from unisup.config import TrainingConfig
from unisup.serving.codec import decode_texts

QUERIES = ["red wine glass", "sofa bed", "usb c cable 2m", "kids desk lamp", "office chair"]


@pytest.fixture(scope="module")
def biencoder_dir(tiny_encoder_path, tmp_path_factory):
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16, projection_dim=8)
    return save_biencoder(tower, tower, tmp_path_factory.mktemp("biencoder") / "model")


def test_repository_layout_and_versions(biencoder_dir, tmp_path):
    cfg = TrainingConfig(
        triton_model_name="qenc", triton_max_batch_size=32, triton_queue_delay_us=500, triton_instances=2
    )
    assert export_query_encoder(biencoder_dir, tmp_path, cfg) == "qenc/1"
    assert export_query_encoder(biencoder_dir, tmp_path, cfg) == "qenc/2"
    config = (tmp_path / "qenc" / "config.pbtxt").read_text()
    for line in (
        'name: "qenc"',
        'backend: "python"',
        "max_batch_size: 32",
        'name: "query" data_type: TYPE_STRING dims: [ 1 ]',
        'name: "embedding" data_type: TYPE_FP32 dims: [ 8 ]',
        "max_queue_delay_microseconds: 500",
        "count: 2 kind: KIND_CPU",
    ):
        assert line in config
    for version in ("1", "2"):
        assert (tmp_path / "qenc" / version / "model.py").exists()
        assert (tmp_path / "qenc" / version / "query_tower" / PROJECTION_FILE).exists()


def test_model_py_imports_outside_triton(biencoder_dir, tmp_path):
    export_query_encoder(biencoder_dir, tmp_path, TrainingConfig())
    spec = importlib.util.spec_from_file_location(
        "exported_query_encoder_model", tmp_path / "query_encoder" / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pb_utils is None and hasattr(module.TritonPythonModel, "execute")
    added = module.extend_sys_path(str(tmp_path))
    try:
        assert sys.path[0] == str(tmp_path) and added == [str(tmp_path)]
    finally:
        sys.path.remove(str(tmp_path))


def test_service_embeds_the_whole_dynamic_batch_in_one_pass(biencoder_dir):
    service = QueryEncoderService(biencoder_dir / "query_tower")
    calls = []
    original = service.tower.encode
    service.tower.encode = lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw)
    requests = [
        np.array([[q.encode()] for q in QUERIES[:2]], dtype=np.object_),
        np.array([[QUERIES[2]]], dtype=np.object_),  # str is accepted too
        np.array([[q.encode()] for q in QUERIES[3:]], dtype=np.object_),
    ]
    outputs = service.embed_batches(requests)
    assert calls == [5]
    assert [o.shape for o in outputs] == [(2, 8), (1, 8), (2, 8)]
    expected = original(QUERIES)
    np.testing.assert_allclose(np.concatenate(outputs), expected, atol=1e-6)
    assert decode_texts(requests[0]) == QUERIES[:2]
    assert service.embed_batches([np.zeros((0, 1), dtype=np.object_)])[0].shape == (0, 8)


@pytest.mark.triton
def test_real_tritonserver_serves_the_exported_query_tower(biencoder_dir, tmp_path, tritonserver_available):
    import tritonclient.http as httpclient

    from unisup.serving.triton_server import triton_server

    export_query_encoder(biencoder_dir, tmp_path / "repo", TrainingConfig())
    expected = QueryEncoderService(biencoder_dir / "query_tower").tower.encode(QUERIES)
    with triton_server(tmp_path / "repo", models=["query_encoder"]) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        batch = np.array([[q.encode()] for q in QUERIES], dtype=np.object_)
        request = httpclient.InferInput("query", list(batch.shape), "BYTES")
        request.set_data_from_numpy(batch)
        result = client.infer("query_encoder", [request]).as_numpy("embedding")
    np.testing.assert_allclose(result, expected, atol=1e-5)
