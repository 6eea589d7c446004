"""On a terminal, training shows its progress within each epoch and the time the run has left."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest


@pytest.mark.parametrize("columns", [100, 0])  # 0: a terminal that does not report its width
def test_training_on_a_terminal_shows_a_bar_within_each_epoch_and_the_time_left(tmp_path, columns):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    command = [sys.executable, "-m", "mindscope", "train", "--width", "4", "--train-limit", "320",
               "--test-limit", "16", "--epochs", "2", "--batch-size", "16", "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": ""}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    try:
        for _ in range(10_000):  # bounded: stops at end of output or after 120 s of silence
            ready, _, _ = select.select([leader], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        process.wait(timeout=120)
        os.close(leader)
    text = seen.decode("utf-8", "replace")
    assert process.returncode == 0, text
    for epoch in (1, 2):
        assert f"epoch {epoch}/2:" in text and "/20 [" in text  # 320 images / 16 a batch = 20 steps
    assert "run ends in ~" in text
