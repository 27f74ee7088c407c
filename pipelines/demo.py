"""``make demo``: the compiled unified_supervision pipeline, end to end on the bundled sample,
through ``kfp.local.SubprocessRunner`` on this machine.

Simulated logs -> extraction -> teacher training -> cascade labeling through a real local
tritonserver (in-process only when none can start; the output says which) -> fusion ->
training (candidate and the engagement-only control) -> index -> evaluation -> push to a
GCS emulator started for the run. The screen shows each stage as it ends (the full output
goes to a log file under the root), then the teacher audit, the headline table, where the
HTML report is, and a verdict line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from kfp import components, local

from pipelines.local_gcs import local_gcs
from pipelines.local_view import StageView, planned_tasks

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "compiled" / "unified_supervision.yaml"
BUCKET = "unisup-demo"
HEADLINE = ["unified", "engagement_only", "bm25", "minilm"]
COLUMNS = ["ndcg@10", "condensed_ndcg@10", "judged@10", "grade0_share@10", "recall@10"]


def demo_arguments(profile: str = "local", max_steps: int | None = None) -> dict:
    """Pipeline parameters of the demo: the profile (its sample data and training budget;
    ``max_steps`` caps the steps), a local Triton, and serving locations on the emulated GCS."""
    serving = f"gs://{BUCKET}/serving"
    return {
        "config": profile,
        "extraction_engine": "duckdb",
        "shard_count": 1,
        "labeling_backend": "triton_local",
        **({"max_steps": max_steps} if max_steps is not None else {}),
        "serving_model_repository": f"{serving}/triton_models",
        "serving_index_root": f"{serving}/indexes",
        "experiment_config_root": f"{serving}/experiments",
        # the model and index production serves today: the A/B control, recorded in the config
        "control_model_uri": f"gs://{BUCKET}/production/query_encoder",
        "control_index_uri": f"gs://{BUCKET}/production/index",
    }


def newest_run(root: Path) -> Path:
    runs = sorted(root.glob("unified-supervision-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no pipeline run under {root}")
    return runs[-1]


def headline(results: dict) -> str:
    """The headline rows (unified vs engagement-only vs BM25 vs MiniLM) of the evaluation JSON:
    each system's own value over all judged test queries (human grades)."""
    names = {"unified": "candidate", "engagement_only": "engagement_only", "bm25": "bm25", "minilm": "minilm"}
    values: dict[str, dict[str, float]] = {}
    for row in results["results"]:
        if row.get("baseline") is None and row["slice"] == "all" and row["judged_by"] == "human":
            values.setdefault(row["system"], {})[row["metric"]] = row["value"]
    width = max(len(n) for n in HEADLINE) + 2
    lines = ["system".ljust(width) + "".join(c.rjust(19) for c in COLUMNS)]
    lines.append("-" * len(lines[0]))
    for shown in HEADLINE:
        got = values.get(names[shown])
        if got:
            cells = "".join(f"{got[c]:19.4f}" if got.get(c) is not None else "n/a".rjust(19) for c in COLUMNS)
            lines.append(shown.ljust(width) + cells)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO / "runs" / "demo"), help="pipeline root [runs/demo]")
    parser.add_argument("--config", default="local", help="profile: local (the demo) or quality (make reproduce)")
    parser.add_argument("--max-steps", type=int, help="training steps per bi-encoder [the profile's budget]")
    args = parser.parse_args(argv)
    root = Path(args.root)
    start = time.perf_counter()
    log_path = root / "logs" / f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}.log"
    arguments = demo_arguments(args.config, args.max_steps)
    spec = next(d for d in yaml.safe_load_all(COMPILED.read_text()) if d)
    stages = planned_tasks(spec, loop_iterations=arguments["shard_count"], skipped=("read-given-logs",))
    say = sys.stdout.write
    say("unisup demo: the compiled pipeline on the bundled Icecat/Chorus sample (data/sample/ATTRIBUTION.md)\n")
    say(f"profile: {args.config}\n")
    say(f"pipeline: {COMPILED.relative_to(REPO)}; runner: kfp.local.SubprocessRunner; root: {root}\n")
    say(f"full log (executor inputs, warnings, progress bars): {log_path}\n")
    with local_gcs(BUCKET) as url:
        say(f"GCS emulator for the push: {url} (bucket {BUCKET})\n\n")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        pipeline = components.load_component_from_file(str(COMPILED))
        with StageView(root, log_path, stages) as view:
            pipeline(**arguments)
        run = newest_run(root)
        if len(view.finished) < len(stages):
            say(f"not run: {', '.join(sorted(set(stages.values()) - set(view.finished_names)))}\n")
        text = summary(run) + f"\ndone in {(time.perf_counter() - start) / 60:.1f} min\n"
    say(text)
    with open(log_path, "a") as log:
        log.write(text)
    return 0


def summary(run: Path) -> str:
    """The teacher audit, the labeling backend used, the students against their start, the
    headline table, the blessing, the push and a verdict line, as text."""
    from unisup.teachers.audit import format_audit

    audit = json.loads(next(run.glob("train-teacher/audit")).read_text())
    lines = ["", "teachers against held-out human grades and the features-only baseline", ""]
    lines += format_audit(audit).rstrip("\n").split("\n")
    label_meta = _metadata(run, "label")
    lines += ["", f"labeling backend used: {label_meta.get('backend_used', 'unknown')}"]
    stages = json.loads(label_meta.get("cascade_stages", "[]"))
    if stages:
        reached = [int(label_meta.get(f"{name}_pairs", 0)) for name in stages]
        shares = ", ".join(f"{name} {n} ({n / max(1, reached[0]):.0%})" for name, n in zip(stages, reached))
        lines.append(f"cascade, pairs reaching each stage (first shard): {shares}")
    for task, arm in (("train", "unified"), ("train-2", "engagement-only")):  # kfp.local task names
        meta = _metadata(run, task)
        if meta.get("start_validation_ndcg") is not None:
            above = "BELOW its start" if meta.get("below_start") else "above its start"
            lines.append(
                f"student {arm}: validation nDCG@10 {meta['best_validation_ndcg']:.4f} at step {int(meta['best_step'])}"
                f" against {meta['start_validation_ndcg']:.4f} for the start encoder ({above})"
            )
    results = json.loads(next(run.glob("evaluate/results_json")).read_text())
    lines += ["", "headline: test queries, human grades, retrieval over the full catalog", "", headline(results)]
    lines += ["", f"HTML report: {next(run.glob('evaluate/report_html/report.html'))}"]
    blessing = json.loads(next(run.glob("evaluate/blessing")).read_text())
    lines.append(f"blessed: {blessing['blessed']}")
    lines += [f"  - {reason}" for reason in blessing.get("reasons", [])]
    pushed = list(run.glob("push/experiment_config"))
    if pushed:
        config = json.loads(pushed[0].read_text())
        lines.append(
            f"pushed: experiment {config['experiment_id']} version {config['version']}, treatment "
            f"{config['treatment_model_uri']} at {config['treatment_traffic']:.0%} of traffic"
        )
    else:
        lines.append("not pushed: the candidate was not blessed")
    lines += ["", verdict(blessing, results["settings"]["evaluation"])]
    return "\n".join(lines) + "\n"


def verdict(blessing: dict, evaluation: dict) -> str:
    """One line: unified against the A/B control on the gate metric, with its CI, blessed or not and why."""
    metric, control = evaluation["gate_metric"], (evaluation.get("gate_baselines") or ["control"])[0]
    found = blessing["evidence"]["deltas"].get(f"{metric}_vs_{control}")
    head = f"verdict: unified vs {control}"
    if found:
        low, high = found["ci"]
        head += f", {metric} {found['delta']:+.3f} (95% CI {low:+.3f} to {high:+.3f})"
    if blessing["blessed"]:
        return f"{head}: BLESSED, every gate passed, pushed to the A/B config"
    failed = [gate["reason"] for gate in blessing["gates"].values() if not gate["passed"]]
    why = failed[0] + (f" (and {len(failed) - 1} more gates)" if len(failed) > 1 else "") if failed else "no gate ran"
    return f"{head}: NOT blessed, {why}"


def _metadata(run: Path, task: str) -> dict:
    """Metadata of the task's output artifacts (the first iteration, inside a ParallelFor)."""
    for path in sorted(run.rglob(f"{task}/executor_output.json")):
        outputs = json.loads(path.read_text()).get("artifacts", {})
        return {k: v for out in outputs.values() for a in out["artifacts"] for k, v in a.get("metadata", {}).items()}
    return {}


if __name__ == "__main__":
    sys.exit(main())
