"""Readiness probe for the Triton pod: every listed model answers ``/v2/models/<name>/ready``.

Run by the Deployment's exec readiness probe with the image's system python (standard
library only). Models come from ``--models`` or the ``UNISUP_READY_MODELS`` environment
variable (comma-separated); exit status 0 only when each one reports ready (HTTP 200).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def model_ready(base_url: str, name: str, timeout: float) -> bool:
    """True when Triton reports the model ``name`` ready (HTTP 200 on its ready endpoint)."""
    url = f"{base_url.rstrip('/')}/v2/models/{name}/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def not_ready(base_url: str, names: list[str], timeout: float) -> list[str]:
    """The models among ``names`` that are not ready."""
    return [name for name in names if not model_ready(base_url, name, timeout)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("UNISUP_TRITON_HTTP", "http://127.0.0.1:8000")
    )
    parser.add_argument("--models", default=os.environ.get("UNISUP_READY_MODELS", ""))
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        print("models_ready: no models named (--models or UNISUP_READY_MODELS)", file=sys.stderr)
        return 2
    missing = not_ready(args.url, names, args.timeout)
    if missing:
        print(f"models_ready: not ready: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
