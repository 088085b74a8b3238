"""``examples/drive/app.py`` as a user runs it: a real process in a folder of its own, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from procs import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "drive" / "app.py"
ENV = {key: value for key, value in os.environ.items() if key != "TORNADO_SIGNIN_CONFIG"}


class DriveExample:
    """``python examples/drive/app.py --port P --emulator-port E`` running in ``folder``."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.port, self.emulator_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.log_path = folder / "example.log"
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), "--port", str(self.port), "--emulator-port", str(self.emulator_port), *extra],
            cwd=folder, env=ENV, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, proc=self.proc, timeout=30)
        wait_port(self.emulator_port, proc=self.proc, timeout=30)

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def sync(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``python examples/drive/app.py sync --emulator-port E`` in the same folder."""
        return subprocess.run([sys.executable, str(APP), "sync", "--emulator-port", str(self.emulator_port), *extra],
                              cwd=self.folder, env=ENV, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log_file.close()
        return self.proc.returncode
