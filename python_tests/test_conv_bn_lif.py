"""conv_bn_lif_inference against the unfused sequence (F.conv2d -> eval F.batch_norm -> lif_multistep /
if_multistep) and its kernels (Triton, under TRITON_INTERPRET=1 without a GPU; CUDA where built) against
its reference: neuron kinds and resets, decay_input, v_init, geometry (stride, padding, dilation, groups,
odd sizes), T=1, an empty batch, with and without BatchNorm and bias, float32 and float16 (and bfloat16
on a GPU); fold_batch_norm; bad arguments; opcheck; torch.compile; the nn module
against conv -> bn -> neuron modules; the Triton kernel's AOT compilation for sm_90; the CUDA schema.

Spike criterion (docs/conv_bn_lif.md): folding the BatchNorm (and fp32 accumulation in another order)
rounds the neuron's input differently, so a spike may flip where the charge lies within a tiny
tolerance of the threshold: ``|H - v_threshold| <= SPIKE_TOLERANCE[dtype] * T * max(1, max|input|)``,
with H and the input those of the expectation. Per neuron, the spikes must agree up to the first
disagreement, which must be at such a step (after it the membranes differ and the rest may too), and
at most MAX_FLIPPED_FRACTION of the neurons (or one) may disagree at all.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_bit_equal, cuda_schemas
from spike_helpers import FAST_BACKENDS, TRITON_USABLE
from triton_aot import case as aot_case
from triton_aot import compile_test

from spikekern.nn import BatchNorm2d, Conv2d, ConvBNLIFInference, Flatten, IFNode, LIFNode, ParametricLIFNode, fuse_conv_bn_lif
from spikekern.functional import reset_net
from spikekern.ops import conv_bn_lif_inference, if_multistep, lif_multistep
from spikekern.ops._multistep import STATE_FLOAT
from spikekern.ops.conv_bn_lif import fold_batch_norm
from spikekern.ops.neuron import NEURON_IF, NEURON_LIF, reference_forward

# Per step, relative to the scale of the neuron's input. float32: some 80 units of float32 rounding (a
# short dot product summed in another order); float16: one unit of float16 rounding (2**-11), which the
# unfused sequence applies to the convolution's and the BatchNorm's outputs and folding to the weight;
# bfloat16 (GPU only): one unit of bfloat16 rounding (2**-8).
SPIKE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-4, torch.bfloat16: 4e-3}
MAX_FLIPPED_FRACTION = 0.02
TRITON_ONLY = pytest.mark.skipif(not TRITON_USABLE, reason="the Triton backend cannot run here")

# (x_seq shape [T, N, C, H, W], out_channels, kernel, F.conv2d geometry, options): BatchNorm and bias are
# on unless the options say otherwise.
CASES = {
    "lif-hard-pad": ((4, 2, 5, 7, 6), 6, (3, 3), dict(padding=1), dict()),
    "lif-soft-stride2-nobias": ((3, 2, 4, 9, 7), 5, (3, 3), dict(stride=2), dict(v_reset=None, bias=False)),
    "lif-nodecay-dilation-groups": (
        (3, 1, 4, 8, 7), 6, (3, 2), dict(padding=(2, 1), dilation=2, groups=2), dict(decay_input=False)
    ),
    "if-hard-no-bn": ((4, 2, 3, 5, 5), 4, (3, 3), dict(padding=1), dict(neuron="if", bn=False)),
    "if-soft-depthwise-vinit": (
        (3, 2, 3, 6, 5), 6, (3, 3), dict(stride=(1, 2), padding=1, groups=3),
        dict(neuron="if", v_reset=None, v_init=True),
    ),
    "lif-vinit-T1-1x1": ((1, 3, 5, 5, 3), 7, (1, 1), dict(), dict(v_init=True, v_threshold=0.5, v_reset=-0.25)),
    "lif-affine-free-bn-spikes": ((4, 2, 6, 5, 4), 3, (2, 2), dict(stride=(2, 1)), dict(affine=False, spikes=True)),
    "no-bn-no-bias": ((3, 2, 4, 5, 6), 4, (3, 3), dict(padding=1), dict(bn=False, bias=False)),
    "empty-batch": ((2, 0, 3, 5, 5), 4, (3, 3), dict(padding=1), dict()),
}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def make_problem(shape, out_channels, kernel, geometry, options, dtype, seed=0):
    """Keyword arguments of conv_bn_lif_inference: random input (real values, or spikes), weight, bias,
    BatchNorm statistics (running variance away from 0) and neuron options."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=generator)).to(DEVICE)

    groups = geometry.get("groups", 1)
    x = (torch.rand(shape, generator=generator) < 0.3).float() if options.get("spikes") else randn(*shape)
    args = dict(x_seq=x.to(DEVICE, dtype), weight=randn(out_channels, shape[2] // groups, *kernel, scale=0.5).to(dtype),
                **geometry)  # fmt: skip
    if options.get("bias", True):
        args["bias"] = randn(out_channels).to(dtype)
    if options.get("bn", True):
        args.update(bn_mean=randn(out_channels, scale=0.5), bn_var=randn(out_channels).abs() + 0.5, bn_eps=1e-3)
        if not options.get("affine"):
            args.update(bn_weight=randn(out_channels).abs() + 0.5, bn_bias=randn(out_channels, scale=0.3))
    for key in ("neuron", "decay_input", "v_threshold", "v_reset"):
        if key in options:
            args[key] = options[key]
    if options.get("v_init"):
        images = args["x_seq"].flatten(0, 1)[: shape[1]].float()
        out_shape = F.conv2d(images, args["weight"].float(), None, **geometry).shape
        args["v_init"] = randn(*out_shape, scale=0.5).to(dtype)
    return args


def neuron_arguments(args):
    """(neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset) of reference_forward."""
    v_reset = args.get("v_reset", 0.0)
    kind = NEURON_IF if args.get("neuron") == "if" else NEURON_LIF
    return kind, 2.0, args.get("decay_input", True), args.get("v_threshold", 1.0), v_reset or 0.0, v_reset is None


def charges(neuron_input, args):
    """(spikes, H) of the neuron reference on ``neuron_input`` [T, N, OC, OH, OW] (float32 arithmetic)."""
    v_init = args.get("v_init")
    spikes, _, h, _ = reference_forward(
        neuron_input.float(), None if v_init is None else v_init.float(), None, *neuron_arguments(args), False,
        STATE_FLOAT,
    )  # fmt: skip
    return spikes, h


def geometry_of(args):
    return {key: args[key] for key in ("stride", "padding", "dilation", "groups") if key in args}


def unfused(args):
    """(spikes, neuron input, H): F.conv2d -> eval F.batch_norm -> lif/if_multistep, in x_seq's dtype."""
    x = args["x_seq"]
    y = F.conv2d(x.flatten(0, 1), args["weight"], args.get("bias"), **geometry_of(args))
    if "bn_mean" in args:
        bn = [args.get(key) for key in ("bn_mean", "bn_var", "bn_weight", "bn_bias")]
        y = F.batch_norm(y, *[None if t is None else t.to(x.dtype) for t in bn], training=False, eps=args["bn_eps"])
    y = y.view(*x.shape[:2], *y.shape[1:])
    neuron = dict(v_threshold=args.get("v_threshold", 1.0), v_reset=args.get("v_reset", 0.0))
    if args.get("neuron") == "if":
        spikes, _ = if_multistep(y, args.get("v_init"), **neuron)
    else:
        spikes, _ = lif_multistep(y, args.get("v_init"), decay_input=args.get("decay_input", True), **neuron)
    expected_spikes, h = charges(y, args)
    assert_bit_equal(spikes.float(), expected_spikes, "lif_multistep vs the neuron reference")
    return spikes, y, h


def folded_charges(args):
    """(neuron input, H) of conv_bn_lif_inference's reference: the folded convolution in float32."""
    weight, bias = fold_batch_norm(
        args["weight"], args.get("bias"), *[args.get(k) for k in ("bn_mean", "bn_var", "bn_weight", "bn_bias")],
        args.get("bn_eps", 1e-5),
    )  # fmt: skip
    x = args["x_seq"]
    y = F.conv2d(x.flatten(0, 1).float(), weight.to(x.dtype).float(), bias, **geometry_of(args))
    y = y.view(*x.shape[:2], *y.shape[1:])
    return y, charges(y, args)[1]


def assert_spikes_agree(actual, expected, neuron_input, h, args, what):
    """The spike criterion of the module docstring; returns the number of neurons that flipped."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    steps = actual.shape[0]
    if actual.numel() == 0:
        return 0
    scale = max(1.0, neuron_input.abs().max().item())
    tolerance = SPIKE_TOLERANCE[args["x_seq"].dtype] * steps * scale
    differ = actual.float() != expected.float()
    flipped = differ.any(0)
    first = differ.float().argmax(0)  # the first step that disagrees, per neuron
    margin = (h - args.get("v_threshold", 1.0)).abs().gather(0, first.unsqueeze(0))[0]
    unexplained = flipped & (margin > tolerance)
    assert not unexplained.any(), (
        f"{what}: {int(unexplained.sum())} neurons disagree first where |H - v_threshold| > {tolerance:.2e} "
        f"(margins {margin[unexplained][:5].tolist()}; first at {unexplained.nonzero()[:5].tolist()})"
    )
    count = int(flipped.sum())
    assert count <= max(1, MAX_FLIPPED_FRACTION * flipped.numel()), f"{what}: {count}/{flipped.numel()} neurons flipped"
    return count


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_reference_equals_the_unfused_sequence(name, dtype):
    args = make_problem(*CASES[name], dtype)
    spikes = conv_bn_lif_inference(**args, backend="torch")
    expected, neuron_input, h = unfused(args)
    assert spikes.is_contiguous()
    assert_spikes_agree(spikes, expected, neuron_input.float(), h, args, f"{name} reference vs unfused")
    if spikes.numel():
        rate = expected.float().mean().item()
        assert 0 < rate < 1, f"{name}: a spike rate of {rate} tests nothing"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_kernels_equal_the_reference(backend, name, dtype):
    args = make_problem(*CASES[name], dtype)
    spikes = conv_bn_lif_inference(**args, backend=backend)
    expected = conv_bn_lif_inference(**args, backend="torch")
    neuron_input, h = folded_charges(args)
    assert_spikes_agree(spikes, expected, neuron_input, h, args, f"{name} {backend} vs reference")


def test_fold_batch_norm_equals_conv_then_batch_norm_in_float64():
    args = make_problem(*CASES["lif-hard-pad"], torch.float64)
    bn = [args[key].double() for key in ("bn_mean", "bn_var", "bn_weight", "bn_bias")]
    images = args["x_seq"].flatten(0, 1)
    expected = F.batch_norm(F.conv2d(images, args["weight"], args["bias"], padding=1), *bn, eps=args["bn_eps"])
    weight, bias = fold_batch_norm(args["weight"], args["bias"], *bn, args["bn_eps"])
    assert weight.dtype == bias.dtype == torch.float64
    torch.testing.assert_close(F.conv2d(images, weight, bias, padding=1), expected, rtol=1e-12, atol=1e-12)
    weight16, bias16 = fold_batch_norm(args["weight"].half(), None, *bn, args["bn_eps"])
    assert weight16.dtype == bias16.dtype == torch.float32  # float32 for 16-bit weights, whatever the statistics
    assert fold_batch_norm(args["weight"], None, None, None, None, None, 1e-5)[1] is None


def test_the_torch_backend_is_the_reference_and_takes_float64():
    args = make_problem(*CASES["lif-hard-pad"], torch.float64)
    spikes = conv_bn_lif_inference(**args)  # CPU tensors: the reference
    expected, neuron_input, h = unfused(args)
    assert spikes.dtype == torch.float64
    assert_spikes_agree(spikes, expected, neuron_input, h, {**args, "x_seq": args["x_seq"].float()}, "float64")


@pytest.mark.skipif(DEVICE != "cpu", reason="checks the refusals seen from a CPU tensor")
def test_backend_choice_is_explained():
    args = make_problem(*CASES["lif-hard-pad"], torch.float32)
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run this input: the CUDA kernels need a CUDA"):
        conv_bn_lif_inference(**args, backend="cuda")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        conv_bn_lif_inference(**args, backend="cudnn")
    if TRITON_USABLE:
        double = make_problem(*CASES["lif-hard-pad"], torch.float64)
        with pytest.raises(RuntimeError, match="backend='triton' cannot run this input: torch.float64"):
            conv_bn_lif_inference(**double, backend="triton")


BAD_ARGUMENTS = [
    (dict(x_seq=[1.0]), TypeError, "x_seq must be a torch.Tensor"),
    (dict(x_seq=torch.zeros(2, 5, 7, 6, device=DEVICE)), ValueError, r"x_seq must be time-first \[T, N, C, H, W\]"),
    (dict(x_seq=torch.zeros(4, 2, 5, 7, 6, dtype=torch.int32, device=DEVICE)), TypeError, "x_seq must be float16"),
    (dict(weight=torch.zeros(6, 4, 3, 3, device=DEVICE)), ValueError, "weight must have shape"),
    (dict(weight=torch.zeros(6, 5, 3, 3, dtype=torch.int64, device=DEVICE)), TypeError, "weight must be a floating-point"),
    (dict(bias=torch.zeros(5, device=DEVICE)), ValueError, r"bias must have shape \[out_channels\]"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(groups=2), ValueError, "weight must have shape"),
    (dict(stride=0), ValueError, "stride must be at least 1"),
    (dict(padding="same"), TypeError, "padding must be an int or a pair of ints"),
    (dict(dilation=(1, 2, 3)), TypeError, "dilation must be an int or a pair of ints"),
    (dict(padding=0, dilation=5), ValueError, "does not fit the input"),
    (dict(bn_var=None), ValueError, "bn_mean and bn_var must be given together"),
    (dict(bn_mean=None, bn_var=None), ValueError, "bn_weight/bn_bias need bn_mean and bn_var"),
    (dict(bn_mean=torch.zeros(5, device=DEVICE)), ValueError, r"bn_mean must have shape \[out_channels\]"),
    (dict(bn_weight=torch.zeros(6, 1, device=DEVICE)), ValueError, r"bn_weight must have shape \[out_channels\]"),
    (dict(bn_bias="0"), TypeError, "bn_bias must be None or a torch.Tensor"),
    (dict(bn_eps=-1.0), ValueError, "bn_eps must be >= 0"),
    (dict(bn_eps=float("nan")), ValueError, "bn_eps must be finite"),
    (dict(neuron="plif"), ValueError, "neuron must be one of"),
    (dict(tau=1.0), ValueError, "tau must be > 1"),
    (dict(tau="2"), TypeError, "tau must be a float"),
    (dict(decay_input=1), TypeError, "decay_input must be a bool"),
    (dict(v_threshold=None), TypeError, "v_threshold must be a float"),
    (dict(v_reset=float("inf")), ValueError, "v_reset must be finite"),
    (dict(v_init=torch.zeros(2, 6, 7, 5, device=DEVICE)), ValueError, r"v_init must have shape \[N, OC, OH, OW\]"),
    (dict(v_init=torch.zeros(2, 6, 7, 6, dtype=torch.int32, device=DEVICE)), TypeError, "v_init must be a floating-point"),
]


@pytest.mark.parametrize(("changes", "error", "match"), BAD_ARGUMENTS, ids=[m for _, _, m in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_with_their_names(changes, error, match):
    args = make_problem(*CASES["lif-hard-pad"], torch.float32)
    with pytest.raises(error, match=match):
        conv_bn_lif_inference(**{**args, **changes})


def test_if_ignores_tau():
    args = make_problem(*CASES["if-hard-no-bn"], torch.float32)
    assert_bit_equal(conv_bn_lif_inference(**args, tau=None), conv_bn_lif_inference(**args), "IF with tau=None")


@pytest.mark.parametrize("name", ["x_seq", "weight", "bias", "bn_mean", "v_init"])
def test_tensors_that_require_grad_are_refused_under_grad_mode(name):
    args = make_problem(*CASES["lif-vinit-T1-1x1"], torch.float32)
    args["bn_mean"] = torch.zeros(7, device=DEVICE)
    args["bn_var"] = torch.ones(7, device=DEVICE)
    args[name] = args[name].clone().requires_grad_()
    with pytest.raises(RuntimeError, match=f"inference-only .* but {name} requires grad"):
        conv_bn_lif_inference(**args)
    with torch.no_grad():
        conv_bn_lif_inference(**args)


def _op_arguments(args, backend):
    """The custom op's positional arguments, as conv_bn_lif_inference passes them."""
    return (
        args["x_seq"], args["weight"], args.get("bias"), [1, 1], [1, 1], [1, 1], 1, args.get("bn_mean"),
        args.get("bn_var"), args.get("bn_weight"), args.get("bn_bias"), args.get("bn_eps", 1e-5), NEURON_LIF, 2.0,
        True, 1.0, 0.0, False, args.get("v_init"), backend,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["torch"] + FAST_BACKENDS)
def test_opcheck(backend):
    args = make_problem((2, 2, 3, 4, 5), 4, (3, 3), dict(padding=1), dict(v_init=True), torch.float32)
    torch.library.opcheck(
        torch.ops.spikekern.conv_bn_lif_inference.default, _op_arguments(args, backend),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )  # fmt: skip


def test_torch_compile_fullgraph_has_no_graph_break():
    torch._dynamo.reset()
    args = make_problem(*CASES["lif-hard-pad"], torch.float32)

    def block(x_seq):
        return conv_bn_lif_inference(**{**args, "x_seq": x_seq}).sum((-2, -1))

    compiled = torch.compile(block, fullgraph=True)(args["x_seq"])
    assert_bit_equal(compiled, block(args["x_seq"]), "compiled output")


# ----------------------------------------------------------------------------------------------
# nn module
# ----------------------------------------------------------------------------------------------


def trained_modules(neuron, bn=True, seed=0):
    """conv -> bn -> neuron modules with random parameters and running statistics, in eval mode."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(4, 6, 3, stride=(1, 2), padding=1, dilation=(2, 1), groups=2).to(DEVICE)
    batch_norm = None
    if bn:
        batch_norm = torch.nn.BatchNorm2d(6).to(DEVICE)
        with torch.no_grad():
            batch_norm.running_mean.normal_(0.0, 0.5)
            batch_norm.running_var.uniform_(0.5, 2.0)
            batch_norm.weight.uniform_(0.5, 1.5)
            batch_norm.bias.normal_(0.0, 0.3)
        batch_norm.eval()
    return conv, batch_norm, neuron


@pytest.mark.parametrize(
    "neuron", [LIFNode(tau=3.0, decay_input=False, v_reset=None, step_mode="m"), IFNode(step_mode="m")],
    ids=["lif", "if"],
)
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
def test_module_equals_conv_bn_neuron_modules(neuron, bn):
    conv, batch_norm, neuron = trained_modules(neuron, bn)
    block = ConvBNLIFInference.from_modules(conv, batch_norm, neuron)
    x_seq = torch.randn(3, 2, 4, 7, 6, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        spikes = block(x_seq)
        y = conv(x_seq.flatten(0, 1))
        y = (batch_norm(y) if bn else y).view(*x_seq.shape[:2], *y.shape[1:])
        neuron.reset()
        expected = neuron(y)
        neuron.reset()
    args = {"x_seq": x_seq, "neuron": "if" if isinstance(neuron, IFNode) else "lif",
            "decay_input": getattr(neuron, "decay_input", True), "v_threshold": neuron.v_threshold,
            "v_reset": neuron.v_reset}  # fmt: skip
    assert_spikes_agree(spikes, expected, y, charges(y, args)[1], args, "module vs conv -> bn -> neuron")
    assert 0 < expected.mean().item() < 1


def multi_step_network():
    """Two conv -> BN -> LIF runs in a Sequential (the second inside a nested one), eval mode, trained stats."""
    torch.manual_seed(2)

    def block(cin, cout, neuron):
        bn = BatchNorm2d(cout, step_mode="m")
        with torch.no_grad():
            bn.running_mean.normal_(0.0, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
        return [Conv2d(cin, cout, 3, padding=1, step_mode="m"), bn, neuron]

    net = torch.nn.Sequential(
        *block(2, 4, LIFNode(tau=2.0, step_mode="m")),
        torch.nn.Sequential(*block(4, 4, IFNode(v_reset=None, step_mode="m"))),
        Flatten(step_mode="m"),
    )  # fmt: skip
    return net.to(DEVICE).eval()


def test_fuse_conv_bn_lif_replaces_every_run_and_keeps_the_spikes():
    net = multi_step_network()
    x_seq = 2 * torch.randn(3, 2, 2, 6, 5, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.no_grad():
        expected = net(x_seq)
        reset_net(net)
        report = fuse_conv_bn_lif(net)
        spikes = net(x_seq)
    assert report == {"fused": ["0", "3.0"], "skipped": {}}
    assert isinstance(net[0], ConvBNLIFInference) and isinstance(net[3][0], ConvBNLIFInference)
    assert all(isinstance(net[i], torch.nn.Identity) for i in (1, 2))
    assert 0 < expected.mean().item() < 1
    assert_bit_equal(spikes, expected, "fused network")  # float32 folding flips nothing on these inputs


def test_fuse_conv_bn_lif_says_why_it_skips():
    net = multi_step_network().train()
    assert fuse_conv_bn_lif(net)["fused"] == []
    assert "training mode" in fuse_conv_bn_lif(net)["skipped"]["0"]
    net.eval()
    net[0].step_mode = "s"
    net[3][2].store_v_seq = True
    report = fuse_conv_bn_lif(net)
    assert report["fused"] == []
    assert "step_mode='m'" in report["skipped"]["0"] and "store_v_seq" in report["skipped"]["3.0"]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        fuse_conv_bn_lif([net])


def test_module_refuses_what_it_cannot_do():
    conv, batch_norm, neuron = trained_modules(LIFNode(step_mode="m"))
    block = ConvBNLIFInference.from_modules(conv, batch_norm, neuron)
    assert not block.training and "kernel_size=(3, 3)" in repr(block)
    with pytest.raises(RuntimeError, match="inference-only .* call .eval()"):
        block.train()(torch.zeros(1, 1, 4, 5, 5))
    with pytest.raises(TypeError, match="neuron must be a spikekern.nn.LIFNode or IFNode"):
        ConvBNLIFInference.from_modules(conv, batch_norm, ParametricLIFNode())
    with pytest.raises(ValueError, match="store_v_seq=True"):
        ConvBNLIFInference.from_modules(conv, batch_norm, LIFNode(store_v_seq=True))
    stateful = LIFNode()
    stateful(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="holds a membrane .* neuron.reset()"):
        ConvBNLIFInference.from_modules(conv, batch_norm, stateful)
    with pytest.raises(ValueError, match="bn is in training mode"):
        ConvBNLIFInference.from_modules(conv, torch.nn.BatchNorm2d(6), neuron)
    with pytest.raises(ValueError, match="no running statistics"):
        ConvBNLIFInference.from_modules(conv, torch.nn.BatchNorm2d(6, track_running_stats=False).eval(), neuron)
    with pytest.raises(ValueError, match="bn has 5 features"):
        ConvBNLIFInference.from_modules(conv, torch.nn.BatchNorm2d(5).eval(), neuron)
    with pytest.raises(TypeError, match="bn must be a torch.nn.BatchNorm2d"):
        ConvBNLIFInference.from_modules(conv, torch.nn.BatchNorm1d(6).eval(), neuron)
    with pytest.raises(ValueError, match="pad with zeros"):
        ConvBNLIFInference.from_modules(torch.nn.Conv2d(4, 6, 3, padding="same"), None, neuron)
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d"):
        ConvBNLIFInference.from_modules(torch.nn.Linear(4, 6), None, neuron)


# ----------------------------------------------------------------------------------------------
# Kernels: the membrane is never stored, AOT compilation, the CUDA schema
# ----------------------------------------------------------------------------------------------


@TRITON_ONLY
def test_the_triton_kernel_stores_nothing_but_spikes():
    triton_conv_bn_lif = pytest.importorskip("spikekern.ops.triton.conv_bn_lif")
    source = inspect.getsource(triton_conv_bn_lif._conv_bn_lif_kernel.fn)
    assert source.count("tl.store(") == 1 and "tl.store(spike_ptr" in source


KERNEL = dict(NEURON_KIND=1, DECAY_INPUT=True, SOFT_RESET=False, HAS_BIAS=True, HAS_V_INIT=True,
              DOT_PRECISION="tf32x3", BLOCK_M=64, BLOCK_N=64, BLOCK_C=32)  # fmt: skip
FLOAT_SCALARS = {"tau": "fp32", "v_threshold": "fp32", "v_reset": "fp32"}


def kernel_case(dtype, **variant):
    constexprs = {**KERNEL, **variant, **({} if dtype == "float32" else {"DOT_PRECISION": "tf32"})}
    return aot_case("conv_bn_lif", "_conv_bn_lif_kernel", constexprs, dtype, 90, ("bias_ptr",), FLOAT_SCALARS, "i32")


AOT_CASES = [kernel_case(dtype) for dtype in ("float32", "float16", "bfloat16")] + [
    kernel_case("float32", NEURON_KIND=0, DECAY_INPUT=False, SOFT_RESET=True, HAS_BIAS=False, HAS_V_INIT=False),
    kernel_case("float16", DECAY_INPUT=False, SOFT_RESET=True),
]


def check_ptx(spec, result):
    assert result["tensor_cores"], "the implicit GEMM must run on tensor cores"
    assert not result["fma"], "no multiply-add may be contracted (the neuron rounds as the reference)"
    if spec["constexprs"]["NEURON_KIND"] == 1:
        assert result["div_rn"], "LIF's division by tau must be an IEEE division"


test_kernel_compiles_for_sm90 = compile_test(AOT_CASES, check_ptx)


def test_cuda_schema_takes_the_triton_host_functions_arguments():
    triton_conv_bn_lif = pytest.importorskip("spikekern.ops.triton.conv_bn_lif")
    schema = cuda_schemas()["conv_bn_lif_inference"]
    names = [argument.name for argument in schema.arguments]
    assert names == list(inspect.signature(triton_conv_bn_lif.conv_bn_lif_inference).parameters)
    assert len(schema.returns) == 1
