"""Served-teacher logic outside Triton, and the python-backend template."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from unisup.serving import TEACHER_TEMPLATE, template
from unisup.serving.codec import decode_texts, encode_texts
from unisup.teachers.backends import InProcessBackend, TritonBackend
from unisup.teachers.serving import TeacherService

TEMPLATE = template(TEACHER_TEMPLATE)


def test_bytes_round_trip():
    texts = ["laptop", "café crème", ""]
    encoded = encode_texts(texts)
    assert encoded.shape == (3, 1) and encoded.dtype == np.object_
    assert decode_texts(encoded) == texts


def test_dynamic_batch_is_scored_together_and_split_per_request(trained_teachers):
    folder = Path(trained_teachers["repository"]) / "fast" / "1" / "teacher"
    service = TeacherService(folder)
    requests = [
        (encode_texts(["usb cable", "laptop"]), encode_texts(["USB cable", "Notebook"])),
        (encode_texts(["mouse"]), encode_texts(["Wireless mouse"])),
    ]
    outputs = service.score_batches(requests)
    assert [o.shape for o in outputs] == [(2, 4), (1, 4)] and all(o.dtype == np.float32 for o in outputs)
    alone = InProcessBackend(trained_teachers["repository"]).predict(
        "fast", ["usb cable", "laptop", "mouse"], ["USB cable", "Notebook", "Wireless mouse"]
    )
    np.testing.assert_allclose(np.concatenate(outputs), alone, atol=1e-5)


def test_template_imports_outside_triton_and_extends_sys_path(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("teacher_model_template", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pb_utils is None and hasattr(module, "TritonPythonModel")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv(module.PATH_ENV, str(tmp_path / "a"))
    added = module.extend_sys_path(str(tmp_path / "b"))
    assert added == [str(tmp_path / "a"), str(tmp_path / "b")] and sys.path[:2] == added


def test_small_forward_batches_give_the_same_probabilities(trained_teachers):
    folder = Path(trained_teachers["repository"]) / "precise" / "1" / "teacher"
    queries = ["usb cable", "laptop", "mouse"]
    items = [json.dumps({"title": t, "brand": "", "description": ""}) for t in ("USB cable, 2 m", "Notebook", "Mouse")]
    requests = [(encode_texts(queries[:2]), encode_texts(items[:2]))]  # the stacked stage reads item records
    requests.append((encode_texts(queries[2:]), encode_texts(items[2:])))
    whole = np.concatenate(TeacherService(folder, batch_size=64).score_batches(requests))
    split = np.concatenate(TeacherService(folder, batch_size=1).score_batches(requests))
    np.testing.assert_allclose(split, whole, atol=1e-5)


def test_triton_backend_sends_length_sorted_requests_and_keeps_the_input_order(monkeypatch):
    backend = TritonBackend("unused:1", batch_size=2, concurrency=2)
    sent = []

    def infer(stage, queries, items):
        sent.append(list(queries))
        return np.array([[float(q)] for q in queries], dtype=np.float32)

    monkeypatch.setattr(backend, "_infer", infer)
    queries = ["1", "22", "333", "4444", "55555"]
    probs = backend.predict("fast", queries, ["x"] * 5)
    backend.close()
    assert sorted(sent) == sorted([["55555", "4444"], ["333", "22"], ["1"]])
    assert probs[:, 0].tolist() == [1.0, 22.0, 333.0, 4444.0, 55555.0]
