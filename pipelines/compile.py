"""Compile every pipeline to ``pipelines/compiled/<name>.yaml`` with the KFP compiler.

python -m pipelines.compile            (make compile)
python -m pipelines.compile --check    exit 1, naming the files, when the committed YAML is stale
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from kfp import compiler

COMPILED = Path(__file__).resolve().parent / "compiled"


def pipelines() -> dict[str, Callable]:
    """Every pipeline of the project, by the file name of its compiled YAML."""
    from pipelines.ablation import ablation
    from pipelines.unified_supervision import unified_supervision

    return {"unified_supervision": unified_supervision, "ablation": ablation}


def compile_all(out_dir: str | Path = COMPILED) -> list[Path]:
    """Compile each pipeline into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in pipelines().items():
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
        written.append(path)
    return written


def stale(committed_dir: str | Path = COMPILED) -> list[str]:
    """Names of the compiled files that are missing or differ from a fresh compile."""
    with tempfile.TemporaryDirectory(prefix="unisup-compile-") as tmp:
        fresh = compile_all(tmp)
        return [
            p.name
            for p in fresh
            if not (Path(committed_dir) / p.name).exists()
            or (Path(committed_dir) / p.name).read_text() != p.read_text()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(COMPILED), help="where the YAML goes")
    parser.add_argument("--check", action="store_true", help="compare with the YAML in --out-dir instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out_dir)
        if names:
            print(
                f"stale compiled pipelines in {args.out_dir}: {', '.join(names)} (run `make compile`)",
                file=sys.stderr,
            )
            return 1
        print(f"compiled pipelines in {args.out_dir} are up to date")
        return 0
    for path in compile_all(args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
