"""Start the real ``tritonserver`` shipped inside nvidia-pytriton (CPU, python backend).

The binary cannot run from site-packages as it is: it is copied to a writable folder,
the python backend stub of this interpreter's version is put in
``backends/python/``, and ``LD_LIBRARY_PATH`` lists nvidia_pytriton.libs and this
interpreter's LIBDIR (without the latter the stub loads the system libpython and
models fail). ``UNISUP_PYTHONPATH`` tells ``model.py`` where unisup and its
dependencies are installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import unisup

PATH_ENV = "UNISUP_PYTHONPATH"


def pytriton_server_dir() -> Path | None:
    """The tritonserver folder inside the installed nvidia-pytriton, or None when absent."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return folder if (folder / "bin" / "tritonserver").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_server(dest: str | Path) -> Path:
    """Copy tritonserver with this Python's backend stub into ``dest``; returns the binary."""
    source = pytriton_server_dir()
    if source is None:
        raise FileNotFoundError("tritonserver not found: install nvidia-pytriton (the 'triton' extra)")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"no python backend stub for Python {version} in {source}")
    dest = Path(dest)
    shutil.copytree(
        source, dest, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"), dirs_exist_ok=True
    )
    shutil.copy2(stub, dest / "backends" / "python" / "triton_python_backend_stub")
    return dest / "bin" / "tritonserver"


def server_environment() -> dict[str, str]:
    """The environment of the server process: library path and where unisup lives."""
    env = dict(os.environ)
    libs = Path(pytriton_server_dir() or ".").parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (str(libs), sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    project = str(Path(unisup.__file__).resolve().parents[1])
    env[PATH_ENV] = ":".join([project, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return env


def serving_view(repository: Path, dest: Path, execution_env: str | None) -> list[str]:
    """A repository view at ``dest`` for this machine: each model's config.pbtxt, plus
    ``EXECUTION_ENV_PATH`` (the Python environment the stub runs in) when given and not
    set already, and links to its version folders. Returns the model names."""
    names = []
    for model in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").exists()):
        target = dest / model.name
        target.mkdir(parents=True)
        config = (model / "config.pbtxt").read_text()
        if execution_env and "EXECUTION_ENV_PATH" not in config:
            config += f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{execution_env}" }} }}\n'
        (target / "config.pbtxt").write_text(config)
        for entry in model.iterdir():
            if entry.name != "config.pbtxt":
                (target / entry.name).symlink_to(entry.resolve())
        names.append(model.name)
    return names


def current_environment() -> str | None:
    """This interpreter's virtual environment (the stub must import its numpy 1.x), if any."""
    return sys.prefix if (Path(sys.prefix) / "bin" / "activate").exists() else None


@dataclass
class TritonServer:
    """A running tritonserver process, restartable on the same ports."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    grpc_port: int
    http_port: int
    log_path: Path
    models: list[str]
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, ready_timeout_s: float = 180.0) -> None:
        """Start the process and wait until every model is ready."""
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.wait_ready(self.models, ready_timeout_s)

    def restart(self, ready_timeout_s: float = 180.0) -> None:
        """Kill the process if it runs, then start it again on the same ports."""
        self.kill()
        self.start(ready_timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def model_ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{name}/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, models: Sequence[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(models)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with status {self.process.returncode}:\n{self.log_tail()}")
            pending = [m for m in pending if not self.model_ready(m)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"tritonserver: model(s) {', '.join(pending)} not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
                )
            if pending:
                time.sleep(0.25)

    def kill(self) -> None:
        """Kill the server and its python stubs at once (SIGKILL to the process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop gracefully (SIGINT), killing after ``timeout_s``."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def triton_server(
    repository: str | Path,
    models: Sequence[str] | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    ready_timeout_s: float = 180.0,
    execution_env: str | None = "current",
    poll_secs: int | None = None,
) -> Iterator[TritonServer]:
    """Run tritonserver on ``repository`` (free ports unless given) until every model is ready.

    ``models`` defaults to every model of the repository. ``execution_env`` is the
    Python environment of the python-backend stub ("current": this interpreter's venv;
    None: the stub's default). With ``poll_secs`` the server serves the repository itself, as
    the serving deployment does (``--model-control-mode=poll``), and picks up the versions and
    configs written to it while it runs; its configs then name their ``EXECUTION_ENV_PATH``
    where the stub needs one. The server is stopped on exit.
    """
    repository = Path(repository).resolve()
    if execution_env == "current":
        execution_env = current_environment()
    with tempfile.TemporaryDirectory(prefix="unisup-tritonserver-") as tmp:
        binary = prepare_server(Path(tmp) / "tritonserver")
        if poll_secs is None:
            view = Path(tmp) / "repository"
            names = serving_view(repository, view, execution_env)
        else:
            view, names = repository, sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())
        grpc_port, http_port = grpc_port or _free_port(), http_port or _free_port()
        command = [
            str(binary),
            f"--model-repository={view}",
            f"--backend-directory={binary.parents[1] / 'backends'}",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            "--allow-metrics=false",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--exit-on-error=true",
        ]
        if poll_secs is not None:
            command += ["--model-control-mode=poll", f"--repository-poll-secs={poll_secs}"]
        elif models is not None:
            command += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in models]
        server = TritonServer(
            command,
            server_environment(),
            Path(tmp),
            grpc_port,
            http_port,
            Path(tmp) / "tritonserver.log",
            list(models if models is not None else names),
        )
        try:
            server.start(ready_timeout_s)
            yield server
        finally:
            server.stop()
