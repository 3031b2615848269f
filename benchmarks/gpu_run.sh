#!/usr/bin/env bash
# One phase of the GPU verification and benchmark run, on a GPU machine without network access (such as
# this project's device runner, whose commands are limited to 10 minutes each; every phase fits one).
#
#   bash benchmarks/gpu_run.sh PHASE [OUT_DIR]
#
# PHASE: tests-spike   GPU tests of the spike ops, the fused block and CUDA-graph sampling
#        tests-neuron  GPU tests of the neuron and Leaky ops and the layers
#        tests-models  GPU tests of the models, pipelines and commands
#        tests-index   index math beyond 2^31 elements in every op (needs a GPU with 40 GB)
#        bench-neuron  neuron-op and whole-model benchmarks (not torch.compile)
#        bench-spike   spike_conv2d / spike_linear / fused block against cuDNN and cuBLAS
#        bench-compile the torch.compile cases
#        bench-sddpm   the SDDPM U-Net's headline cases: training step and DDIM-50 sampling (eager, CUDA graphs)
#        bench-scaling the SDDPM U-Net's training step against T, batch and resolution
#        bench-families FSDDIM and Spiking-Diffusion against their SpikingJelly-built twins: training step, sampling
# OUT_DIR (default $OUT, else benchmarks/results/gpu): each phase writes PHASE.log there; the test phases
# a junit PHASE.xml, the benchmark phases append to results.jsonl (then: python -m spikekern.bench report).
#
# SpikingJelly, snnTorch and loguru come from wheels in .whl/ when present (benchmarks/README.md says how
# to fetch them); the CUDA extension is built once per machine, for Hopper unless TORCH_CUDA_ARCH_LIST says.
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:?"usage: bash benchmarks/gpu_run.sh PHASE [OUT_DIR]"}
out=${2:-${OUT:-benchmarks/results/gpu}}
phases=" tests-spike tests-neuron tests-models tests-index bench-neuron bench-spike bench-compile bench-sddpm bench-scaling bench-families "
[[ $phases == *" $phase "* ]] || { echo "unknown phase $phase; one of:$phases" >&2; exit 2; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import spikekern._C" 2>/dev/null; then
    SPIKEKERN_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 20
fi
python3 -m spikekern.info > "$out/info.txt"

run_tests() {
    python3 -m pytest "$@" -q -p no:cacheprovider -rs --junitxml "$out/$phase.xml" 2>&1 | tee "$out/$phase.log"
}
run_bench() {
    SPIKEKERN_BENCH_RESULTS="$out/results.jsonl" python3 -m pytest "$@" -q -p no:cacheprovider \
        --benchmark-columns=min,median,iqr,rounds 2>&1 | tee "$out/$phase.log"
}

case "$phase" in
    tests-spike) run_tests python_tests/test_spike_conv2d_cuda.py python_tests/test_spike_linear.py \
        python_tests/test_conv_bn_lif.py python_tests/test_spike_conv2d.py python_tests/test_spike_pack.py \
        python_tests/test_cuda_graphs.py ;;
    tests-neuron) run_tests python_tests/test_neuron_backends.py python_tests/test_leaky_backends.py \
        python_tests/test_neuron_api.py python_tests/test_leaky_api.py python_tests/test_nn_spikingjelly.py \
        python_tests/test_nn_snntorch.py python_tests/test_nn_spike_layers.py python_tests/test_neuron_ddp.py ;;
    tests-models) run_tests python_tests/test_models_sddpm.py python_tests/test_models_fsddim.py \
        python_tests/test_models_spiking_diffusion.py python_tests/test_pipeline_fsddim.py \
        python_tests/test_pipeline_spiking_diffusion.py python_tests/test_cli_sddpm.py python_tests/test_energy.py ;;
    tests-index) SPIKEKERN_SLOW_TESTS=1 run_tests python_tests/test_spike_index_math.py \
        python_tests/test_neuron_backends.py python_tests/test_leaky_backends.py -k index_math ;;
    bench-neuron) run_bench benchmarks -k "not compile and not sddpm" --ignore benchmarks/test_spike_ops.py \
        --ignore benchmarks/test_diffusion_families.py ;;
    bench-spike) run_bench benchmarks/test_spike_ops.py ;;
    bench-compile) run_bench benchmarks -k compile ;;
    bench-sddpm) run_bench benchmarks/test_diffusion_models.py -k "not scaling" ;;
    bench-scaling) run_bench benchmarks/test_diffusion_models.py -k scaling --bench-rounds 20 ;;
    bench-families) run_bench benchmarks/test_diffusion_families.py ;;
esac
