"""Where teacher stages run: in this process, or on a Triton server over gRPC.

A backend answers ``predict(stage, queries, items) -> (n, K) float32`` per-grade
probabilities for raw texts, and ``wait_ready(stages)``. Nothing here assumes a
cross-encoder: a Triton stage may be any model with the same inputs and output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from unisup.serving.codec import encode_texts
from unisup.teachers.serving import ITEM_INPUT, PROBS_OUTPUT, QUERY_INPUT

log = logging.getLogger(__name__)

RETRYABLE_STATUS = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


class Backend(Protocol):
    name: str

    def wait_ready(self, stages: Sequence[str]) -> None: ...

    def predict(self, stage: str, queries: Sequence[str], items: Sequence[str]) -> np.ndarray: ...


class BackendUnavailable(RuntimeError):
    """The teachers could not be reached or did not become ready in time."""


class InProcessBackend:
    """Teachers loaded from the Triton repository's model files, run in this process."""

    name = "inprocess"
    fallback = ""  # why it stands in for another backend, if it does

    def __init__(self, repository: str | Path, batch_size: int = 64):
        self.repository = Path(repository)
        self.batch_size = batch_size
        self._teachers: dict = {}

    def teacher_dir(self, stage: str) -> Path:
        return self.repository / stage / "1" / "teacher"

    def wait_ready(self, stages: Sequence[str]) -> None:
        for stage in stages:
            self._teacher(stage)

    def _teacher(self, stage: str):
        from unisup.teachers.model import load_teacher

        if stage not in self._teachers:
            folder = self.teacher_dir(stage)
            if not folder.exists():
                raise FileNotFoundError(
                    f"stage {stage!r}: no teacher at {folder} (in-process needs the model files;"
                    " stages of kind 'served' run on the triton backend only)"
                )
            self._teachers[stage] = load_teacher(folder)
        return self._teachers[stage]

    def predict(self, stage: str, queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self._teacher(stage).predict_probs(list(queries), list(items), self.batch_size)


class TritonBackend:
    """tritonclient gRPC: length-sorted client-side batches, bounded concurrency, timeouts, retries with backoff."""

    name = "triton"
    fallback = ""

    def __init__(
        self,
        url: str,
        batch_size: int = 64,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        ready_timeout_s: float = 60.0,
    ):
        self.url = url
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.ready_timeout_s = ready_timeout_s
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def _client(self):
        import tritonclient.grpc as grpcclient

        if getattr(self._local, "client", None) is None:
            self._local.client = grpcclient.InferenceServerClient(self.url)
        return self._local.client

    def wait_ready(self, stages: Sequence[str]) -> None:
        """Wait until the server and every stage's model are ready, or raise BackendUnavailable."""
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(stages)
        last_error = ""
        while pending:
            try:
                pending = [s for s in pending if not self._client().is_model_ready(s)]
            except Exception as err:  # connection refused and friends: keep waiting until the deadline
                last_error = f": {err}"
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"Triton at {self.url}: model(s) {', '.join(pending)} not ready after "
                    f"{self.ready_timeout_s:.0f} s{last_error}"
                )
            time.sleep(0.2)

    def _infer_once(self, stage: str, queries: Sequence[str], items: Sequence[str], timeout_s: float) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        inputs = [
            grpcclient.InferInput(QUERY_INPUT, [len(queries), 1], "BYTES"),
            grpcclient.InferInput(ITEM_INPUT, [len(items), 1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(encode_texts(queries))
        inputs[1].set_data_from_numpy(encode_texts(items))
        result = self._client().infer(
            stage, inputs, outputs=[grpcclient.InferRequestedOutput(PROBS_OUTPUT)], client_timeout=timeout_s
        )
        probs = result.as_numpy(PROBS_OUTPUT)
        if probs is None or probs.shape[0] != len(queries):
            raise BackendUnavailable(
                f"Triton model {stage}: expected {len(queries)} rows of probs, got "
                f"{None if probs is None else probs.shape}"
            )
        return probs.astype(np.float32)

    def _infer(self, stage: str, queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
        from tenacity import (
            RetryError,
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
        )
        from tritonclient.utils import InferenceServerException

        def retryable(err: BaseException) -> bool:
            if isinstance(err, InferenceServerException) and str(err.status()) in RETRYABLE_STATUS:
                self._local.client = None  # a fresh channel after a broken connection
                return True
            return False

        retrying = Retrying(
            stop=stop_after_attempt(self.retries),
            retry=retry_if_exception(retryable),
            wait=wait_exponential(multiplier=self.backoff_s, max=10),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    # each retry doubles the deadline: a busy server labels later, not never
                    timeout_s = self.timeout_s * 2 ** (attempt.retry_state.attempt_number - 1)
                    probs = self._infer_once(stage, queries, items, timeout_s)
            return probs
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise BackendUnavailable(
                f"Triton at {self.url}, model {stage}: gave up after {self.retries} attempts: {cause}"
            ) from cause

    def predict(self, stage: str, queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
        queries, items = list(queries), list(items)
        if not queries:
            raise ValueError("predict needs at least one pair")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="triton")
        # requests of similar lengths, as InProcessBackend batches: a merged dynamic batch pads less
        order = np.argsort([-(len(q) + len(t)) for q, t in zip(queries, items)], kind="stable")
        chunks = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        parts = self._pool.map(
            lambda idx: self._infer(stage, [queries[i] for i in idx], [items[i] for i in idx]), chunks
        )
        sorted_probs = np.concatenate(list(parts))
        probs = np.empty_like(sorted_probs)
        probs[order] = sorted_probs
        return probs

    def close(self) -> None:
        """Stop the request threads (their gRPC channels close with them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
