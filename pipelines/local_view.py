"""What a terminal shows of a ``kfp.local`` run: the full output (executor inputs, warnings,
progress bars) goes to a log file, and the screen gets one line per stage, "stage k of n",
as each task finishes (``kfp.local`` runs them one at a time), plus a line every
``heartbeat_secs`` while a stage runs.

It watches the pipeline root, where ``kfp.local`` writes each task's ``executor_output.json``
when the task ends. It points ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2 at
the log, so kfp.local's logger, the lines it relays from each task's subprocess and any
native output all land there. Nothing of kfp is patched.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

DONE = "executor_output.json"


def planned_tasks(spec: dict, loop_iterations: int = 1, skipped: tuple[str, ...] = ()) -> dict[str, str]:
    """Task key -> display name of every container task a run of the compiled ``spec`` can run:
    tasks of loops counted ``loop_iterations`` times, the tasks named in ``skipped`` (an untaken
    branch) left out."""
    components = spec["components"]
    found: dict[str, str] = {}

    def walk(dag: dict, repeat: int) -> None:
        for key, task in dag["tasks"].items():
            name = task["taskInfo"]["name"]
            if name in skipped:
                continue
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"], repeat * (loop_iterations if "parameterIterator" in task else 1))
            else:
                for i in range(repeat):
                    found[key if repeat == 1 else f"{key}#{i}"] = name

    walk(spec["root"]["dag"], 1)
    return found


class StageView:
    """Context manager: the run's output to ``log_path``, stage lines to the terminal."""

    def __init__(
        self, root: Path, log_path: Path, names: dict[str, str], heartbeat_secs: float = 60.0, poll_secs: float = 2.0
    ):
        self.root, self.log_path, self.names = Path(root), Path(log_path), names
        self.heartbeat_secs, self.poll_secs = heartbeat_secs, poll_secs
        self.finished: dict[Path, float] = {}
        self._stop = threading.Event()
        self.terminal: TextIO = sys.stdout

    def say(self, line: str) -> None:
        """One line on the terminal, and in the log."""
        self.terminal.write(line + "\n")
        self.terminal.flush()
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()

    def __enter__(self) -> StageView:
        self.start = self.last_done = time.monotonic()
        self.before = {p.name for p in self.root.glob("*")} if self.root.exists() else set()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self._log = open(self.log_path, "a", buffering=1)  # noqa: SIM115 (closed in __exit__)
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = self._log  # kfp.local prints its subprocesses' lines and logs here
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._check(time.monotonic())
        sys.stdout, sys.stderr = self._streams
        self._log.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._log.close()
        self._log = None

    _log: TextIO | None = None

    def run_dir(self) -> Path | None:
        """The run this view watches: the newest folder of the root made after it started."""
        new = [p for p in self.root.glob("*") if p.is_dir() and p.name not in self.before]
        return max(new, key=lambda p: p.stat().st_mtime) if new else None

    def _watch(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.poll_secs):
            now = time.monotonic()
            self._check(now)
            if now - last_beat >= self.heartbeat_secs:
                last_beat = now
                self.say(
                    f"  ... {self._minutes(now - self.start)} elapsed, {self._minutes(now - self.last_done)}"
                    f" into stage {len(self.finished) + 1} of {len(self.names)}"
                )

    def _check(self, now: float) -> None:
        run = self.run_dir()
        if run is None:
            return
        for done in sorted(run.rglob(DONE), key=lambda p: p.stat().st_mtime):
            task = done.parent
            if task in self.finished or task.name not in self.names_by_key:
                continue
            self.finished[task] = now
            self.say(
                f"[{len(self.finished):>2}/{len(self.names)}] {self.names_by_key[task.name]:<22}"
                f" done in {self._minutes(now - self.last_done)}  ({self._minutes(now - self.start)} elapsed)"
            )
            self.last_done = now

    @property
    def finished_names(self) -> list[str]:
        return [self.names_by_key[task.name] for task in self.finished]

    @property
    def names_by_key(self) -> dict[str, str]:
        return {key.split("#")[0]: name for key, name in self.names.items()}

    @staticmethod
    def _minutes(seconds: float) -> str:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
