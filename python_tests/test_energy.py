"""The activity monitor's counts on a network small enough to count by hand."""

import pytest
import torch

from spikekern.energy import E_AC_PJ, E_MAC_PJ, ActivityMonitor
from spikekern.nn import IFNode


class TinySpikingNet(torch.nn.Module):
    """Image -> conv (real input: MACs) -> IF -> transposed conv and linear (spike input: SOPs)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.neuron = IFNode(v_threshold=0.5, step_mode="s")
        self.decoder = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.head = torch.nn.Linear(2 * 4 * 4, 5, bias=False)
        self.unused = IFNode(step_mode="s")  # never called: no firing rate to report

    def forward(self, images):
        spikes = self.neuron(self.encoder(images))
        return self.decoder(spikes), self.head(spikes.flatten(1))


def test_counts_macs_of_real_input_and_sops_of_spike_input():
    torch.manual_seed(0)
    net = TinySpikingNet()
    images = 4 * torch.rand(2, 1, 4, 4)
    with torch.no_grad(), ActivityMonitor(net) as monitor:
        net(images)
    net.neuron.reset()
    with torch.no_grad():
        spikes = net.neuron(net.encoder(images))
    rate = float(spikes.mean())
    assert 0 < rate < 1
    encoder_macs = 2 * 2 * 4 * 4 * (1 * 3 * 3)  # output elements x (in_channels x taps)
    decoder_macs = spikes.numel() * 3 * 3 * 3  # input elements x (out_channels x taps)
    head_macs = 2 * 5 * 32  # output elements x in_features
    report = monitor.report
    assert report.calls == 1 and report.images == 2
    assert report.macs == encoder_macs
    assert report.dense_macs == decoder_macs + head_macs
    assert report.sops == pytest.approx((decoder_macs + head_macs) * rate)
    assert report.firing_rates == {"neuron": pytest.approx(rate)}
    assert report.overall_firing_rate == pytest.approx(rate)
    expected_mj = (encoder_macs * E_MAC_PJ + (decoder_macs + head_macs) * rate * E_AC_PJ) / 2 * 1e-9
    assert report.energy_mj_per_image() == pytest.approx(expected_mj)
    assert "ratio SNN/ANN" in report.format(ann_macs_per_image=1000.0)


class CheckingEveryInput(ActivityMonitor):
    """The monitor without its shortcut for layers that read a neuron's output: every input is checked."""

    def _spike_count(self, x):
        self._neuron_outputs.clear()
        return super()._spike_count(x)


def test_layers_reading_neuron_outputs_are_counted_as_the_full_check_counts_them():
    from spikekern.models import SpikingUNet

    torch.manual_seed(0)
    model = SpikingUNet.from_preset("digits", base_channels=8, spike_conv=False).eval()
    images, steps = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 990])
    reports = []
    for monitor_class in (ActivityMonitor, CheckingEveryInput):
        with torch.no_grad(), monitor_class(model) as monitor:
            model(images, steps)
        reports.append(monitor.report)
    shortcut, checked = reports
    assert 0 < shortcut.overall_firing_rate < 1
    assert shortcut.macs == checked.macs and shortcut.dense_macs == checked.dense_macs
    assert shortcut.sops == pytest.approx(checked.sops, rel=1e-6)
    assert shortcut.firing_rates == checked.firing_rates


def test_a_real_valued_input_whose_first_row_is_binary_costs_macs():
    layer = torch.nn.Linear(4, 2, bias=False)
    x = torch.rand(3, 4) + 2.0
    x[0] = torch.tensor([0.0, 1.0, 1.0, 0.0])
    with torch.no_grad(), ActivityMonitor(layer) as monitor:
        layer(x)
    assert monitor.report.macs == 3 * 2 * 4 and monitor.report.sops == 0.0


def test_a_binary_vector_input_costs_synaptic_operations():
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad(), ActivityMonitor(layer) as monitor:
        layer(torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert monitor.report.macs == 0.0 and monitor.report.dense_macs == 2 * 4 and monitor.report.sops == 2 * 4 * 0.5
