"""A first run of the fused neuron ops: train a small spiking classifier on scikit-learn's bundled
digits (8x8 images, no download), then draw the hidden layer's spikes.

    python -m spikekern.demo [--epochs 15] [--steps 4] [--out spikekern-demo]

Prints the backend in use and the test accuracy; writes ``spike_raster.png`` to ``--out``.
"""

import argparse
import os

import torch
from tqdm import tqdm

from .ops import lif_multistep, plif_multistep
from .ops._dispatch import select_backend


class SpikingClassifier(torch.nn.Module):
    """Linear -> LIF -> Linear -> parametric LIF; the class score is the output spike count."""

    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.hidden = torch.nn.Linear(inputs, hidden)
        self.readout = torch.nn.Linear(hidden, classes)
        self.readout_w = torch.nn.Parameter(torch.tensor(0.0))  # tau = 1 / sigmoid(w) = 2 at start

    def forward(self, x_seq):
        hidden_spikes, _ = lif_multistep(self.hidden(x_seq), tau=2.0, surrogate="atan")
        out_spikes, _ = plif_multistep(self.readout(hidden_spikes), self.readout_w, v_reset=None)
        return out_spikes.mean(0), hidden_spikes


def load_digits_tensors(device):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32, device=device) / 16.0
    labels = torch.tensor(digits.target, device=device)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).to(device)
    split = int(0.8 * len(labels))
    return (images[order[:split]], labels[order[:split]]), (images[order[split:]], labels[order[split:]])


def train(epochs, steps, device, batch_size=64):
    torch.manual_seed(0)
    (train_x, train_y), (test_x, test_y) = load_digits_tensors(device)
    model = SpikingClassifier(64, 256, 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in tqdm(range(epochs), desc="training"):
        for start in range(0, len(train_y), batch_size):
            images, labels = train_x[start : start + batch_size], train_y[start : start + batch_size]
            # The image is the input current at every one of the T steps (direct encoding).
            rates, _ = model(images.expand(steps, *images.shape))
            loss = torch.nn.functional.cross_entropy(rates * 10, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        rates, hidden_spikes = model(test_x.expand(steps, *test_x.shape))
    accuracy = (rates.argmax(1) == test_y).float().mean().item()
    return accuracy, hidden_spikes


def save_raster(hidden_spikes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = hidden_spikes.shape[0]
    figure, axes = plt.subplots(1, steps, figsize=(3 * steps, 3.2), sharey=True, squeeze=False)
    for step, axis in enumerate(axes[0]):
        axis.imshow(hidden_spikes[step, :64].cpu().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        axis.set_title(f"t = {step}")
        axis.set_xlabel("hidden neuron")
    axes[0, 0].set_ylabel("test image")
    figure.suptitle("Hidden-layer spikes (LIF, fused over all time steps)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4, help="time steps T")
    parser.add_argument("--out", default="spikekern-demo", help="folder for the spike raster PNG")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steps < 1:
        parser.error("--epochs and --steps must be >= 1")
    backend = select_backend("", torch.empty(1, device=args.device))
    print(f"neuron backend on {args.device}: {backend}")
    accuracy, hidden_spikes = train(args.epochs, args.steps, args.device)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "spike_raster.png")
    save_raster(hidden_spikes, path)
    print(f"test accuracy {accuracy:.3f}; hidden firing rate {hidden_spikes.mean().item():.3f}; raster: {path}")
    return accuracy


if __name__ == "__main__":
    main()
