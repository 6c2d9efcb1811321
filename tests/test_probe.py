"""`k5tune probe`: training learns what the clips show, and the probe can fail."""

from __future__ import annotations

import pytest

from k5tune.cli import main
from k5tune.probe import MARGIN, ProbeResult


def test_the_verdict_needs_both_motions_and_a_quiet_control():
    """The verdict's arithmetic: each motion LoRA 10 % lower on its own motion, the noise LoRA on neither."""
    result = ProbeResult({"right": {"right": 1.0, "down": 1.2}, "down": {"right": 1.3, "down": 1.1},
                          "noise": {"right": 1.5, "down": 1.45}})
    assert result.preference("right")["right"] == pytest.approx(1 - 1.0 / 1.2)
    assert result.learned and not result.control_passes
    one_motion_missed = ProbeResult({**result.losses, "down": {"right": 1.2, "down": 1.1}})  # 8.3 % < 10 %
    assert not one_motion_missed.learned
    noisy_control = ProbeResult({**result.losses, "noise": {"right": 1.0, "down": 1.2}})
    assert noisy_control.control_passes and MARGIN == 0.10


@pytest.mark.slow
def test_k5tune_probe_passes_on_the_tiny_model(tmp_path, capsys):
    """The whole probe as a user runs it (three LoRAs of 300 steps on the CPU): each motion LoRA's held-out
    eval loss is at least 10 % lower on its own motion, and the LoRA trained on noise prefers neither."""
    assert main(["probe", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "result: learned" in out
