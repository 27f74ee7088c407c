"""A local GCS for the demo and the tests: gcp-storage-emulator, in-process, plus the
object-generation preconditions that GCS enforces.

The emulator stores generations but ignores ``ifGenerationMatch`` on uploads. Real GCS
answers 412 Precondition Failed when the object's generation is not the expected one
(0 = the object must not exist). :func:`enforce_generation_preconditions` wraps the
emulator's upload handler with exactly that check, atomically under a lock, so that
conditional writes can be tested against the real google-cloud-storage client.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_LOCK = threading.Lock()


def _precondition_failed(response, message: str) -> None:
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json(
        {"error": {"code": 412, "message": message, "errors": [{"reason": "conditionNotMet", "message": message}]}}
    )


def _object_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        return data["meta"].get("name")
    return None


def _with_preconditions(insert: Callable) -> Callable:
    def checked_insert(request, response, storage, *args, **kwargs):
        expected = request.query.get("ifGenerationMatch")
        if not expected:
            return insert(request, response, storage, *args, **kwargs)
        with _LOCK:
            name = _object_name(request)
            try:
                current = int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                current = 0
            if current != int(expected[0]):
                return _precondition_failed(response, f"generation of {name} is {current}, not {expected[0]}")
            return insert(request, response, storage, *args, **kwargs)

    checked_insert.original = insert
    return checked_insert


@contextmanager
def enforce_generation_preconditions() -> Iterator[None]:
    """Route uploads through the precondition check while the context is open."""
    patched = []
    for _, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is objects.insert:
                methods[method] = _with_preconditions(handler)
                patched.append((methods, method, handler))
    try:
        yield
    finally:
        for methods, method, handler in patched:
            methods[method] = handler


@contextmanager
def local_gcs(bucket: str) -> Iterator[str]:
    """Run the emulator (with preconditions) on a free port with ``bucket``; yields its URL.

    STORAGE_EMULATOR_HOST points google-cloud-storage (and ``unisup.storage``, in this
    process and in the subprocesses it starts) at it while the context is open.
    """
    from unisup import storage

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    with enforce_generation_preconditions():
        emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
        emulator.start()
        url = f"http://127.0.0.1:{port}"
        os.environ["STORAGE_EMULATOR_HOST"] = url
        storage.gcs_client.cache_clear()
        try:
            yield url
        finally:
            emulator.stop()
            storage.gcs_client.cache_clear()
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
