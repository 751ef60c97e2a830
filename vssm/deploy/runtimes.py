"""Exported ONNX files in ONNX Runtime or OpenVINO (CPU), behind one session interface.

``open_session(path, runtime, precision, threads)`` returns an object with ONNX Runtime's ``get_inputs()``,
``get_outputs()`` (items with ``.name``) and ``run(names, feeds)``, so that ``vssm.export.compare_outputs`` and
``scripts/bench_export.py`` treat both runtimes alike. OpenVINO's CPU plugin runs in bf16 by default on CPUs
that have it (about 1e-2 relative for these models): the precision is always set explicitly here, ``f32``
unless asked otherwise.
"""
import importlib.util

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")


class RuntimeMissing(ImportError):
    """The Python package of a runtime is not installed."""


def require(runtime: str):
    """A clear error naming the pip package when ``runtime`` is not installed."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    if importlib.util.find_spec(runtime) is None:
        raise RuntimeMissing(f"{runtime} is not installed: pip install {runtime} (requirements.txt pins the tested "
                             f"version)")


def onnxruntime_session(path: str, threads: int = 0, profile_prefix: str = None):
    """An ONNX Runtime CPU session (errors-only logging; ``threads`` intra-op threads, 0: its default;
    ``profile_prefix``: record every kernel to ``<prefix>*.json``, written by ``end_profiling()``)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about buffer reuse across dynamic shapes
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 on this CPU (AVX512_BF16 or AMX)."""
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class _Named:
    def __init__(self, name: str):
        self.name = name


class OpenVINOSession:
    """An ONNX file compiled by OpenVINO's CPU plugin at an explicit inference precision (``f32`` or ``bf16``).

    Batch (and H, W where the file has them dynamic) stay dynamic: OpenVINO reads them from the ONNX file.
    """

    def __init__(self, path: str, precision: str = "f32", threads: int = 0):
        import openvino as ov
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "bf16" and not openvino_bf16():
            raise ValueError("OpenVINO's CPU plugin has no bf16 on this CPU (it needs AVX512_BF16 or AMX)")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.precision = precision
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._inputs = [_Named(i.get_any_name()) for i in self.compiled.inputs]
        self._outputs = [_Named(o.get_any_name()) for o in self.compiled.outputs]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds: dict) -> list:
        """Like ``onnxruntime.InferenceSession.run``: the named outputs (all when ``names`` is None), as arrays."""
        results = self.request.infer(feeds, share_inputs=False)
        by_name = {o.get_any_name(): results[o] for o in self.compiled.outputs}
        return [by_name[name].copy() for name in (names or [o.name for o in self._outputs])]


def open_session(path: str, runtime: str = "onnxruntime", precision: str = "f32", threads: int = 0):
    """A session of ``path`` in ``runtime`` (``onnxruntime``: always fp32; ``openvino``: at ``precision``)."""
    require(runtime)
    if runtime == "onnxruntime":
        if precision != "f32":
            raise ValueError("ONNX Runtime runs the file's own precision: precision must be f32")
        return onnxruntime_session(path, threads)
    return OpenVINOSession(path, precision, threads)
