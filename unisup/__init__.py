"""unisup: unified supervision for first-stage sponsored-search retrieval."""

__version__ = "0.1.0"


def code_version() -> str:
    """``unisup <version>``, with the git commit (``+dirty`` for uncommitted changes) when the
    package runs from a git checkout and git is installed."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"unisup {__version__}"
    if sha.returncode != 0:
        return f"unisup {__version__}"
    return f"unisup {__version__} (git {sha.stdout.strip()}{'+dirty' if dirty.stdout.strip() else ''})"
