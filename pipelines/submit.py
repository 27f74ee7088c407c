"""Upload a compiled pipeline to Kubeflow Pipelines as a new version and start a run
(``make submit KFP_HOST=...``), or a recurring run with ``--schedule`` or ``--schedule-file``.

    python -m pipelines.submit --host https://kfp.example.com \\
        --pipeline unified_supervision --param shard_count=8 --param triton_url=triton:8001

The version name carries a hash of the compiled YAML, so submitting the same YAML twice
reuses its version. ``--param`` values are checked against the pipeline's parameters and
converted to their declared types before anything is sent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components._k8s import RUNNER_SERVICE_ACCOUNT
from unisup.config import parse_yaml

COMPILED = Path(__file__).resolve().parent / "compiled"
TYPES = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": bool,
    "LIST": list,
    "STRUCT": dict,
}


class SubmitError(ValueError):
    """A bad argument: unknown pipeline or parameter, or a value of the wrong type."""


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its file, name, content hash and declared parameters."""

    path: Path
    name: str
    digest: str
    parameters: dict[str, str]  # name -> KFP parameter type

    @property
    def version_name(self) -> str:
        return f"{self.name}-{self.digest[:12]}"


def load_package(path: str | Path) -> PipelinePackage:
    """Read a compiled pipeline YAML (the first document is the pipeline spec)."""
    path = Path(path)
    if not path.exists():
        raise SubmitError(f"{path}: no compiled pipeline (run `make compile`)")
    data = path.read_bytes()
    spec = next(d for d in yaml.safe_load_all(data) if d)
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    params = {name: p["parameterType"] for name, p in inputs.items()}
    return PipelinePackage(path, spec["pipelineInfo"]["name"], hashlib.sha256(data).hexdigest(), params)


def _convert(raw: str, kind: str, name: str) -> Any:
    if kind == "STRING":
        return raw
    value = parse_yaml(raw)
    if kind == "NUMBER_DOUBLE" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = TYPES[kind]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise SubmitError(f"--param {name}={raw}: expected {kind.lower()}, got {type(value).__name__}")
    return value


def parse_params(items: list[str], package: PipelinePackage) -> dict[str, Any]:
    """``name=value`` strings to typed run parameters, checked against the pipeline."""
    params = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SubmitError(f"--param {item!r}: expected name=value")
        if name not in package.parameters:
            raise SubmitError(
                f"--param {name}: {package.name} has no such parameter; it has: {', '.join(sorted(package.parameters))}"
            )
        params[name] = _convert(raw, package.parameters[name], name)
    return params


def check_cron(expression: str) -> str:
    """KFP's cron has six fields, seconds first (``0 0 3 * * *`` = 03:00 daily)."""
    if len(expression.split()) != 6:
        raise SubmitError(f"--schedule {expression!r}: expected six cron fields (seconds first), e.g. '0 0 3 * * *'")
    return expression


@dataclass(frozen=True)
class Schedule:
    """A recurring run: six-field cron, concurrency, catch-up, and its parameters as strings."""

    cron: str
    max_concurrency: int = 1
    no_catchup: bool = True
    parameters: tuple[str, ...] = ()


def load_schedule(path: str | Path) -> Schedule:
    """A schedule file (``pipelines/schedules/*.yaml``): ``cron``, ``max_concurrency``,
    ``no_catchup`` and ``parameters`` (a mapping, given as ``--param`` strings)."""
    path = Path(path)
    if not path.exists():
        raise SubmitError(f"{path}: no such schedule file")
    data = parse_yaml(path.read_text()) or {}
    known = {"cron", "max_concurrency", "no_catchup", "parameters"}
    if not isinstance(data, dict) or "cron" not in data or set(data) - known:
        raise SubmitError(f"{path}: expected the keys {', '.join(sorted(known))} (cron required)")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise SubmitError(f"{path}: parameters must be a mapping of name: value")
    return Schedule(
        check_cron(str(data["cron"])),
        int(data.get("max_concurrency", 1)),
        bool(data.get("no_catchup", True)),
        tuple(f"{name}={value if isinstance(value, str) else json.dumps(value)}" for name, value in parameters.items()),
    )


def ensure_version(client: Any, package: PipelinePackage) -> tuple[str, str]:
    """(pipeline_id, version_id) of the package on the server, uploading what is missing."""
    pipeline_id = client.get_pipeline_id(package.name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package.path), pipeline_name=package.name)
        pipeline_id = pipeline.pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions or []
    for version in versions:
        if version.display_name == package.version_name:
            return pipeline_id, version.pipeline_version_id
    version = client.upload_pipeline_version(
        str(package.path), pipeline_version_name=package.version_name, pipeline_id=pipeline_id
    )
    return pipeline_id, version.pipeline_version_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="KFP API endpoint (KFP_HOST)")
    parser.add_argument(
        "--pipeline",
        default="unified_supervision",
        help="compiled pipeline name in pipelines/compiled/",
    )
    parser.add_argument("--package", help="compiled YAML to submit instead of pipelines/compiled/<pipeline>.yaml")
    parser.add_argument("--experiment", default="unisup", help="KFP experiment the run belongs to")
    parser.add_argument("--namespace", default="kubeflow", help="KFP namespace (multi-user installs: your profile)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run parameter (repeatable)",
    )
    parser.add_argument("--run-name", help="run name; default <pipeline>-<version hash>")
    parser.add_argument(
        "--service-account",
        default=RUNNER_SERVICE_ACCOUNT,
        help="Kubernetes service account of the pods",
    )
    parser.add_argument("--pipeline-root", help="artifact root, e.g. gs://bucket/kfp; default the server's")
    parser.add_argument(
        "--schedule",
        metavar="CRON",
        help="create a recurring run instead (six-field cron, seconds first)",
    )
    parser.add_argument(
        "--schedule-file",
        metavar="YAML",
        help="create the recurring run a schedule file describes (pipelines/schedules/); --param and --schedule win",
    )
    parser.add_argument("--no-cache", action="store_true", help="disable caching for every task of this run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        package = load_package(args.package or COMPILED / f"{args.pipeline}.yaml")
        schedule = load_schedule(args.schedule_file) if args.schedule_file else None
        if args.schedule:
            schedule = Schedule(check_cron(args.schedule), parameters=schedule.parameters if schedule else ())
        params = parse_params([*(schedule.parameters if schedule else ()), *args.param], package)
    except SubmitError as err:
        print(f"submit: {err}", file=sys.stderr)
        return 2
    import kfp  # the client is only needed once the arguments are known to be good

    client = kfp.Client(host=args.host, namespace=args.namespace)
    pipeline_id, version_id = ensure_version(client, package)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    name = args.run_name or package.version_name
    common = dict(
        experiment_id=experiment.experiment_id,
        job_name=name,
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
        enable_caching=False if args.no_cache else None,
    )
    if schedule:
        run = client.create_recurring_run(
            cron_expression=schedule.cron,
            max_concurrency=schedule.max_concurrency,
            no_catchup=schedule.no_catchup,
            **common,
        )
        print(f"recurring run {run.recurring_run_id} ({schedule.cron}) of {package.version_name}")
    else:
        run = client.run_pipeline(**common)
        print(f"run {run.run_id} of {package.version_name}: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
