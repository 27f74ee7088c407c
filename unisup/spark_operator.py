"""Spark on Kubernetes through the Spark Operator: the ``SparkApplication`` that runs
``unisup extract-logs`` with the spark engine in the cluster, its submission through the
Kubernetes API, and the wait for its end.

The driver runs the same extraction as ``local[N]`` does (:mod:`unisup.logs` on the spark
engine), its master the cluster's; inputs and outputs are URIs the pods can reach (gs://).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from unisup.config import ConfigError, ExtractionConfig

GROUP, VERSION, PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
IN_CLUSTER_MASTER = "k8s://https://kubernetes.default.svc:443"
FINAL_STATES = {"COMPLETED", "FAILED", "SUBMISSION_FAILED", "INVALIDATING"}
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SparkApplicationFailed(RuntimeError):
    """The SparkApplication ended in another state than COMPLETED (or did not end in time)."""


def extraction_arguments(
    logs_uri: str, out_uri: str, holdout_uri: str, quarantine_uri: str, report_uri: str, config: str, overrides: list
) -> list[str]:
    """The ``unisup extract-logs`` arguments of the driver: the spark engine, the cluster's master."""
    args = ["extract-logs", "--config", config, "--logs", logs_uri, "--out", out_uri, "--holdout-out", holdout_uri]
    args += ["--quarantine", quarantine_uri, "--report", report_uri]
    for item in [*overrides, "extraction.engine=spark", f"extraction.spark_master={IN_CLUSTER_MASTER}"]:
        args += ["-o", item]
    return args


def spark_application(name: str, cfg: ExtractionConfig, arguments: list[str]) -> dict:
    """The SparkApplication (sparkoperator.k8s.io/v1beta2) that runs the extraction's driver
    with ``arguments`` in ``cfg.spark_namespace``, sized by the config's ``spark_*`` keys."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"SparkApplication name {name!r}: expected lowercase letters, digits and -, at most 63")
    if not cfg.spark_image:
        raise ConfigError("extraction.spark_image='': a cluster needs a Spark image with unisup[spark] installed")
    labels = {"app.kubernetes.io/part-of": "unisup", "app.kubernetes.io/component": "extract-logs"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": cfg.spark_namespace, "labels": labels},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": cfg.spark_image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": cfg.spark_main_application_file,
            "arguments": arguments,
            "sparkVersion": cfg.spark_version,
            "sparkConf": {"spark.sql.shuffle.partitions": str(cfg.spark_shuffle_partitions)},
            "restartPolicy": {"type": "Never"},
            "timeToLiveSeconds": 3600,
            "driver": {
                "cores": 1,
                "memory": cfg.spark_driver_memory,
                "serviceAccount": cfg.spark_service_account,
                "labels": labels,
            },
            "executor": {
                "instances": cfg.spark_executor_instances,
                "cores": cfg.spark_executor_cores,
                "memory": cfg.spark_executor_memory,
                "labels": labels,
            },
        },
    }


def submit_and_wait(
    application: dict,
    api=None,
    timeout_s: float = 6 * 3600,
    poll_s: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Create ``application`` with the Kubernetes API (``api``: a CustomObjectsApi, else one
    from the in-cluster config, else the kubeconfig) and wait until it ends; returns its
    status when COMPLETED, else raises :class:`SparkApplicationFailed` with the operator's
    error message."""
    if api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    namespace, name = application["metadata"]["namespace"], application["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, application)
    deadline = clock() + timeout_s
    while True:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = current.get("status", {})
        state = status.get("applicationState", {}).get("state", "")
        if state == "COMPLETED":
            return status
        if state in FINAL_STATES:
            message = status.get("applicationState", {}).get("errorMessage", "")
            raise SparkApplicationFailed(f"SparkApplication {namespace}/{name} ended {state}: {message}")
        if clock() > deadline:
            waited = f"still {state or 'new'} after {timeout_s}s"
            raise SparkApplicationFailed(f"SparkApplication {namespace}/{name} {waited}")
        sleep(poll_s)


def extract_on_cluster(
    cfg: ExtractionConfig,
    logs_uri: str,
    out_uri: str,
    holdout_uri: str,
    quarantine_uri: str,
    report_uri: str,
    config: str,
    overrides: list,
    api=None,
    **wait,
) -> tuple[dict, dict | None]:
    """The extraction as a SparkApplication: submitted, waited for, and its reports read back
    (that of the training window at ``report_uri``, that of the held-out days beside
    ``holdout_uri``, None without a hold-out), as :func:`unisup.logs.extract_logs_with_holdout`
    returns them."""
    import json
    import uuid

    from unisup import storage
    from unisup.logs import output_uris

    arguments = extraction_arguments(logs_uri, out_uri, holdout_uri, quarantine_uri, report_uri, config, overrides)
    application = spark_application(f"unisup-extract-logs-{uuid.uuid4().hex[:10]}", cfg, arguments)
    submit_and_wait(application, api, **wait)
    report = json.loads(storage.read_text(report_uri))
    held_out_report = output_uris(holdout_uri, None, None)[1]
    held_out = json.loads(storage.read_text(held_out_report)) if cfg.holdout_days > 0 else None
    return report, held_out
