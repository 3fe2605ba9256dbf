"""SpikingJelly 2.x programs run with only the import changed, against SpikingJelly 2.x itself (float64,
same seed): the programs of tests/activation_based_peer.py (a step-mode conv net, a zoo model with an
encoder and monitors, the DVS-gesture net's checkpoint, every neuron in both step modes, every layer,
the encoders, monitors and functional helpers). Skipped without SpikingJelly 2.x (see tests/sj2.py)."""

from pathlib import Path

import pytest

from sj2 import run_script

PEER = Path(__file__).with_name("activation_based_peer.py")
PROGRAMS = ["conv_net_multi_step", "zoo_with_encoder_and_monitor", "dvs_gesture_checkpoint", "neurons", "layers",
            "encoders_monitors_functional"]
# Gradients agree to float64 rounding: the fused backward adds the same terms in another order.
GRADIENT_TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_script(PEER, PROGRAMS, tmp_path_factory.mktemp("stubs"))


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_gives_spikingjelly_2_numbers(results, program):
    report, differences = results[program]["report"], results[program]["differences"]
    assert all(report.values()), report  # keys, named parameters, checkpoints both ways
    assert differences, "nothing was compared"
    for name, difference in differences.items():
        if "grad" in name.split():
            assert difference <= GRADIENT_TOLERANCE, (name, difference)
        else:
            assert difference == 0.0, (name, difference)  # outputs, encodings, recorded spikes and potentials
