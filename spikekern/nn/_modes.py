"""The ``step_mode`` and ``backend`` settings every spikekern module validates the same way."""

from ..ops import BACKENDS
from ..ops._dispatch import KERNEL_BACKENDS

STEP_MODES = ("s", "m")


class HasStepMode:
    """``step_mode``: 's' (one step per call, ``[N, *]``) or 'm' (all steps per call, ``[T, N, *]``)."""

    @property
    def step_mode(self):
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value):
        if value not in STEP_MODES:
            raise ValueError(f"step_mode must be 's' (single step) or 'm' (multi step), got {value!r}")
        self._step_mode = value


class HasBackend:
    """``backend``: None (the best available per call) or one of the backends of the module's ops."""

    supported_backends = KERNEL_BACKENDS

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, value):
        if value is not None and value not in self.supported_backends:
            raise ValueError(f"backend must be None or one of {list(self.supported_backends)}, got {value!r}")
        self._backend = value


class HasNeuronBackend(HasBackend):
    """The neurons' ops have every backend, the CPU fast path "compiled" included."""

    supported_backends = BACKENDS
