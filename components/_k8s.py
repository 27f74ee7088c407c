"""Kubernetes placement applied to pipeline tasks: resources, GPU nodes, secrets, caching.

Helpers take a task and return it, so a pipeline reads ``on_gpu(train_op(...))``. They
only add settings to the compiled pipeline (kfp-kubernetes platform config and task
resources); ``kfp.local`` ignores them. The pods' Kubernetes service account is a property
of the run, not of a task: ``pipelines/submit.py`` (``--service-account``) and the
the recurring runs it creates set it to :data:`RUNNER_SERVICE_ACCOUNT`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl, kubernetes

from unisup.storage import GCP_KEY_ENV

RUNNER_SERVICE_ACCOUNT = "pipeline-runner"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "cloud.google.com/gke-accelerator"
GCP_KEY_SECRET = "unisup-gcp-key"  # optional: only for clusters without workload identity
GCP_KEY_MOUNT = "/var/secrets/google"
TASK_TIMEOUT_S = 6 * 3600
RETRIES = 3  # attempts after the first, for tasks that resume from their own work (checkpoints, shards)
RETRY_BACKOFF = "60s"  # the first wait; it doubles per attempt, at most an hour


@dataclass(frozen=True)
class Resources:
    """Requests (and the memory limit) of one task's container."""

    cpu: str
    memory: str
    gpus: int = 0


SMALL = Resources(cpu="1", memory="4Gi")
LARGE = Resources(cpu="4", memory="16Gi")
GPU = Resources(cpu="8", memory="48Gi", gpus=1)


def on_cpu(task: dsl.PipelineTask, resources: Resources = SMALL) -> dsl.PipelineTask:
    """Request CPU and memory (memory also as the limit, so the pod is never overcommitted),
    bound the run time and mount the optional GCS key secret."""
    task.set_cpu_request(resources.cpu)
    task.set_memory_request(resources.memory)
    task.set_memory_limit(resources.memory)
    kubernetes.set_timeout(task, TASK_TIMEOUT_S)
    return with_gcp_key(task)


def on_gpu(task: dsl.PipelineTask, resources: Resources = GPU, accelerator: str = "nvidia-l4") -> dsl.PipelineTask:
    """Request GPUs and pin the task to GPU nodes of the given accelerator type."""
    on_cpu(task, resources)
    task.set_accelerator_type(GPU_RESOURCE)
    task.set_accelerator_limit(resources.gpus or 1)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value=accelerator)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="8Gi")
    return retried(task)


def retried(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Retry a failed attempt (a preempted GPU node, a lost connection) with exponential backoff.
    Only for tasks that resume: training from its checkpoints, labeling and indexing from their
    finished shards, so a retry redoes no finished work."""
    task.set_retry(
        num_retries=RETRIES, backoff_duration=RETRY_BACKOFF, backoff_factor=2.0, backoff_max_duration="3600s"
    )
    return task


def with_gcp_key(task: dsl.PipelineTask, secret_name: str = GCP_KEY_SECRET) -> dsl.PipelineTask:
    """Mount the Google service-account key of the Kubernetes secret ``secret_name`` (key
    ``key.json``), if that secret exists, where :func:`unisup.storage.gcs_client` looks for it.
    Clusters with workload identity create no such secret and the pods use their service account."""
    kubernetes.use_secret_as_volume(task, secret_name=secret_name, mount_path=GCP_KEY_MOUNT, optional=True)
    task.set_env_variable(GCP_KEY_ENV, f"{GCP_KEY_MOUNT}/key.json")
    return task


def never_cached(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Run the task every time: side effects such as a push, or reads of what can change
    between runs (a listing of a logs prefix), must not be skipped by a cache hit."""
    task.set_caching_options(enable_caching=False)
    return task
