"""Local paths and ``gs://`` URIs behind one small interface.

Reads and writes bytes and files, lists a prefix, and writes conditionally on an
object generation (GCS semantics: generation 0 means "only if absent"). Against
``gs://`` it uses google-cloud-storage; set ``STORAGE_EMULATOR_HOST`` to talk to an
emulator. Locally the generation is the file's modification time in nanoseconds, and
conditional writes hold a lock file (``.<name>.lock``) while they check and replace,
so both backends behave the same.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from unisup.errors import InputError

GCS_SCHEME = "gs://"
GCP_KEY_ENV = "UNISUP_GCP_KEY_FILE"  # a service-account key file to use when it exists


class PreconditionFailed(RuntimeError):
    """A conditional write lost: the object's generation was not the expected one."""


def is_gcs(uri: str) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def join(uri: str, *parts: str) -> str:
    """Join path parts to a local path or a gs:// URI."""
    base = str(uri)
    for part in parts:
        base = base.rstrip("/") + "/" + str(part).lstrip("/")
    return base


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise InputError(f"not a gs:// URI with a bucket: {uri!r}")
    return bucket, name


def _local(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


@lru_cache(maxsize=1)
def gcs_client():
    """A google-cloud-storage client: anonymous when ``STORAGE_EMULATOR_HOST`` is set; with the
    service-account key file named by ``UNISUP_GCP_KEY_FILE`` when that file exists (a mounted
    Kubernetes secret); else with the default credentials (e.g. workload identity)."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "unisup"), credentials=AnonymousCredentials()
        )
    key_file = os.environ.get(GCP_KEY_ENV, "")
    if key_file and Path(key_file).is_file():
        return storage.Client.from_service_account_json(key_file)
    return storage.Client()


def _blob(uri: str):
    bucket, name = _split(uri)
    return gcs_client().bucket(bucket).blob(name)


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return _blob(uri).exists()
    return _local(uri).exists()


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        return _blob(uri).download_as_bytes()
    return _local(uri).read_bytes()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def generation(uri: str) -> int:
    """The object's generation; 0 when it does not exist."""
    if is_gcs(uri):
        blob = _blob(uri)
        try:
            blob.reload()
        except Exception as err:  # google.api_core.exceptions.NotFound
            if type(err).__name__ == "NotFound":
                return 0
            raise
        return int(blob.generation)
    try:
        return _local(uri).stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def write_bytes(uri: str, data: bytes, if_generation_match: int | None = None) -> int:
    """Write ``data``; with ``if_generation_match`` only if the generation matches.

    Returns the new generation. Raises :class:`PreconditionFailed` when the
    precondition does not hold. Transient GCS errors are retried by the client
    (conditional writes are idempotent, so they are safe to retry).
    """
    if is_gcs(uri):
        from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed
        from google.cloud.storage.retry import DEFAULT_RETRY

        blob = _blob(uri)
        try:
            blob.upload_from_string(data, if_generation_match=if_generation_match, retry=DEFAULT_RETRY)
        except GcsPreconditionFailed as err:
            raise PreconditionFailed(f"{uri}: generation is not {if_generation_match}") from err
        return int(blob.generation)
    path = _local(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    if if_generation_match is None:
        return _replace(path, data)
    with _locked(path):
        current = generation(uri)
        if current != if_generation_match:
            raise PreconditionFailed(f"{uri}: generation is {current}, not {if_generation_match}")
        new = _replace(path, data)
        if new == current:  # same clock tick: make the change visible to the next check
            os.utime(path, ns=(new + 1, new + 1))
            new += 1
        return new


def _replace(path: Path, data: bytes) -> int:
    """Atomically replace ``path`` with ``data``; returns the new generation."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path.stat().st_mtime_ns


def write_text(uri: str, text: str, if_generation_match: int | None = None) -> int:
    return write_bytes(uri, text.encode("utf-8"), if_generation_match)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def list_prefix(uri: str) -> list[str]:
    """Every object (file) under a prefix (folder), as full URIs, sorted."""
    if is_gcs(uri):
        bucket, name = _split(uri)
        blobs = gcs_client().list_blobs(bucket, prefix=name)
        return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs)
    root = _local(uri)
    if root.is_file():
        return [str(root)]
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def upload_file(local_path: str | Path, uri: str) -> None:
    """Copy a local file to a local path or gs:// URI."""
    if is_gcs(uri):
        _blob(uri).upload_from_filename(str(local_path))
        return
    dest = _local(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local_path, dest)


def download_file(uri: str, local_path: str | Path) -> Path:
    """Copy a file at a local path or gs:// URI to ``local_path``."""
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(uri):
        _blob(uri).download_to_filename(str(local_path))
    else:
        shutil.copyfile(_local(uri), local_path)
    return local_path


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file under ``local_dir`` to the prefix ``uri``; returns the URIs written."""
    written = []
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            dest = join(uri, str(path.relative_to(local_dir)))
            upload_file(path, dest)
            written.append(dest)
    return written


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every object under the prefix ``uri`` into ``local_dir``."""
    local_dir = Path(local_dir)
    prefix = str(uri).rstrip("/") + "/"
    for src in list_prefix(uri):
        rel = src[len(prefix) :] if src.startswith(prefix) else Path(src).name
        download_file(src, local_dir / rel)
    return local_dir


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path for ``uri``: the path itself when local, else a temporary download."""
    if not is_gcs(uri):
        yield _local(uri)
        return
    with tempfile.TemporaryDirectory(prefix="unisup-") as tmp:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        target = Path(tmp) / name
        if list_prefix(uri.rstrip("/") + "/"):
            download_dir(uri, target)
        else:
            download_file(uri, target)
        yield target


def content_digest(uri: str) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and bytes, sorted), local or gs://."""
    digest = hashlib.sha256()
    prefix = str(uri).rstrip("/") + "/"
    files = list_prefix(prefix) if is_gcs(uri) or _local(uri).is_dir() else [str(uri)]
    if not files and is_gcs(uri) and exists(uri):
        files = [str(uri)]  # a single object, not a prefix
    if not files:
        raise FileNotFoundError(2, "nothing to hash", str(uri))
    for src in files:
        name = src[len(prefix) :] if src.startswith(prefix) else ""
        digest.update(f"{name}\0".encode())
        digest.update(read_bytes(src))
        digest.update(b"\0")
    return digest.hexdigest()
