"""``make demo``: the compiled unified_supervision pipeline, end to end on the bundled sample,
through ``kfp.local.SubprocessRunner`` on this machine.

Simulated logs -> extraction -> teacher training -> cascade labeling through a real local
tritonserver (in-process only when none can start; the output says which) -> fusion ->
training (candidate and the engagement-only control) -> index -> evaluation -> push to a
GCS emulator started for the run. Prints where the HTML report is and the headline table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kfp import components, local

from pipelines.local_gcs import local_gcs

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
    print("unisup demo: the compiled pipeline on the bundled Icecat/Chorus sample (data/sample/ATTRIBUTION.md)")
    print(f"profile: {args.config}")
    print(f"pipeline: {COMPILED.relative_to(REPO)}; runner: kfp.local.SubprocessRunner; root: {root}")
    with local_gcs(BUCKET) as url:
        print(f"GCS emulator for the push: {url} (bucket {BUCKET})\n")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        pipeline = components.load_component_from_file(str(COMPILED))
        pipeline(**demo_arguments(args.config, args.max_steps))
        run = newest_run(root)
        summarize(run)
    print(f"\ndone in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


def summarize(run: Path) -> None:
    """Print the teacher audit, the labeling backend used, the headline table, the blessing and the push."""
    from unisup.teachers.audit import format_audit

    audit = json.loads(next(run.glob("train-teacher/audit")).read_text())
    print("\nteachers against held-out human grades and the features-only baseline\n")
    print(format_audit(audit), end="")
    label_meta = _metadata(run, "label")
    print(f"\nlabeling backend used: {label_meta.get('backend_used', 'unknown')}")
    stages = json.loads(label_meta.get("cascade_stages", "[]"))
    if stages:
        reached = [int(label_meta.get(f"{name}_pairs", 0)) for name in stages]
        shares = ", ".join(f"{name} {n} ({n / max(1, reached[0]):.0%})" for name, n in zip(stages, reached))
        print(f"cascade, pairs reaching each stage (first shard): {shares}")
    for task, arm in (("train", "unified"), ("train-2", "engagement-only")):  # kfp.local task names
        meta = _metadata(run, task)
        if meta.get("start_validation_ndcg") is not None:
            verdict = "BELOW its start" if meta.get("below_start") else "above its start"
            print(
                f"student {arm}: validation nDCG@10 {meta['best_validation_ndcg']:.4f} at step {int(meta['best_step'])}"
                f" against {meta['start_validation_ndcg']:.4f} for the start encoder ({verdict})"
            )
    results = json.loads(next(run.glob("evaluate/results_json")).read_text())
    print("\nheadline: test queries, human grades, retrieval over the full catalog\n")
    print(headline(results))
    report = next(run.glob("evaluate/report_html/report.html"))
    print(f"\nHTML report: {report}")
    blessing = json.loads(next(run.glob("evaluate/blessing")).read_text())
    print(f"blessed: {blessing['blessed']}")
    for reason in blessing.get("reasons", []):
        print(f"  - {reason}")
    pushed = list(run.glob("push/experiment_config"))
    if pushed:
        config = json.loads(pushed[0].read_text())
        print(
            f"pushed: experiment {config['experiment_id']} version {config['version']}, treatment "
            f"{config['treatment_model_uri']} at {config['treatment_traffic']:.0%} of traffic"
        )
    else:
        print("not pushed: the candidate was not blessed")


def _metadata(run: Path, task: str) -> dict:
    """Metadata of the task's output artifacts (the first iteration, inside a ParallelFor)."""
    for path in sorted(run.rglob(f"{task}/executor_output.json")):
        outputs = json.loads(path.read_text()).get("artifacts", {})
        return {k: v for out in outputs.values() for a in out["artifacts"] for k, v in a.get("metadata", {}).items()}
    return {}


if __name__ == "__main__":
    sys.exit(main())
