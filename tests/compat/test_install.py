"""vssm.compat.install(): the stand-ins resolve by the upstream names, never over a real module unless forced;
and the example written against the upstream API runs as written."""
import importlib
import os
import runpy
import sys
import textwrap

import pytest

import vssm.compat
from vssm.compat import importer, kernels
from vssm.compat import mamba_ssm as compat_mamba_ssm

from .common import assert_same, make_inputs, naive, run

NAMES = tuple(importer.STAND_INS)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _forget_modules():
    for name in list(sys.modules):
        if name.partition(".")[0] in NAMES:
            del sys.modules[name]


@pytest.fixture
def clean_imports(monkeypatch):
    """No finder, no module of the upstream names before and after the test; sys.path restored."""
    if any(importer._real_spec(name) is not None for name in NAMES):
        pytest.skip("a real selective-scan build or mamba_ssm is installed here")
    vssm.compat.uninstall()
    _forget_modules()
    yield monkeypatch
    vssm.compat.uninstall()
    _forget_modules()
    importlib.invalidate_caches()


def _write(root, relpath, text):
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_without_install_nothing_resolves(clean_imports):
    for name in NAMES:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)


def test_stand_ins_serve_every_name_when_nothing_real_is_there(clean_imports):
    report = vssm.compat.install()
    assert report == {name: "stand-in" for name in NAMES}
    import selective_scan_cuda
    import selective_scan_cuda_core
    import selective_scan_cuda_oflex
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref
    assert (selective_scan_cuda_oflex.fwd, selective_scan_cuda_oflex.bwd) == (kernels.oflex_fwd, kernels.oflex_bwd)
    assert (selective_scan_cuda_core.fwd, selective_scan_cuda_core.bwd) == (kernels.core_fwd, kernels.core_bwd)
    assert (selective_scan_cuda.fwd, selective_scan_cuda.bwd) == (kernels.mamba_fwd, kernels.mamba_bwd)
    assert (selective_scan_fn, selective_scan_ref) == (compat_mamba_ssm.selective_scan_fn,
                                                       compat_mamba_ssm.selective_scan_ref)
    assert selective_scan_cuda_oflex.__file__.startswith(os.path.join(ROOT, "vssm", "compat", "stand_ins"))
    assert vssm.compat.install() == {name: "stand-in (already imported)" for name in NAMES}
    assert sum(isinstance(f, importer.StandInFinder) for f in sys.meta_path) == 1
    removed = vssm.compat.uninstall()
    assert "selective_scan_cuda_oflex" in removed and "mamba_ssm.ops.selective_scan_interface" in removed
    with pytest.raises(ModuleNotFoundError):
        import selective_scan_cuda_oflex  # noqa: F401,F811


def test_what_the_mamba_ssm_stand_in_lacks_is_a_clear_import_error(clean_imports):
    vssm.compat.install()
    with pytest.raises(ImportError, match="mamba_inner_fn is not provided by vssm's mamba_ssm stand-in"):
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn  # noqa: F401
    with pytest.raises(ImportError, match="mamba_ssm.Mamba is not provided"):
        from mamba_ssm import Mamba  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match="mamba_ssm.modules is not provided"):
        import mamba_ssm.modules.mamba_simple  # noqa: F401
    import mamba_ssm
    assert not hasattr(mamba_ssm, "something_else")


def test_a_real_module_is_not_shadowed(clean_imports, tmp_path):
    _write(tmp_path, "selective_scan_cuda_oflex.py", "REAL = True\n")
    clean_imports.syspath_prepend(str(tmp_path))
    report = vssm.compat.install()
    assert report["selective_scan_cuda_oflex"] == f"real, at {tmp_path / 'selective_scan_cuda_oflex.py'}"
    assert report["selective_scan_cuda_core"] == "stand-in"
    import selective_scan_cuda_core
    import selective_scan_cuda_oflex
    assert selective_scan_cuda_oflex.REAL and selective_scan_cuda_core.fwd is kernels.core_fwd


def test_force_shadows_a_real_module_not_yet_imported(clean_imports, tmp_path):
    _write(tmp_path, "selective_scan_cuda_oflex.py", "REAL = True\n")
    clean_imports.syspath_prepend(str(tmp_path))
    report = vssm.compat.install(force=True)
    assert report["selective_scan_cuda_oflex"].startswith("stand-in (forced; the real one at")
    import selective_scan_cuda_oflex
    assert selective_scan_cuda_oflex.fwd is kernels.oflex_fwd


def test_a_real_module_already_imported_is_left_alone(clean_imports, tmp_path):
    _write(tmp_path, "selective_scan_cuda_core.py", "REAL = True\n")
    clean_imports.syspath_prepend(str(tmp_path))
    import selective_scan_cuda_core
    report = vssm.compat.install(force=True)
    assert report["selective_scan_cuda_core"].startswith("real, already imported from")
    assert importlib.import_module("selective_scan_cuda_core") is selective_scan_cuda_core


def test_a_broken_real_build_is_reported_and_kept_unless_forced(clean_imports, tmp_path):
    _write(tmp_path, "selective_scan_cuda.py", 'raise ImportError("undefined symbol: _ZN3c104cuda9SetDeviceEi")\n')
    clean_imports.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="fails to import"):
        report = vssm.compat.install()
    assert "fails to import (ImportError: undefined symbol" in report["selective_scan_cuda"]
    assert "install(force=True)" in report["selective_scan_cuda"]
    with pytest.raises(ImportError, match="undefined symbol"):
        import selective_scan_cuda  # noqa: F401
    assert vssm.compat.install(force=True)["selective_scan_cuda"].startswith("stand-in (forced")
    import selective_scan_cuda  # noqa: F811
    assert selective_scan_cuda.fwd is kernels.mamba_fwd


def test_a_real_mamba_ssm_without_its_kernel_runs_on_the_stand_in(clean_imports, tmp_path):
    """mamba_ssm installed but its selective_scan_cuda missing (the failed-build case): its own Python code,
    here a test-made package written to the documented contract, imports the stand-in kernel."""
    _write(tmp_path, "mamba_ssm/__init__.py", "")
    _write(tmp_path, "mamba_ssm/ops/__init__.py", "")
    _write(tmp_path, "mamba_ssm/ops/selective_scan_interface.py", """
        import selective_scan_cuda
        from tests.compat.upstream_functions import mamba_selective_scan_fn_for
        selective_scan_fn = mamba_selective_scan_fn_for(selective_scan_cuda)
        """)
    clean_imports.syspath_prepend(str(tmp_path))
    report = vssm.compat.install()
    assert report["mamba_ssm"] == f"real, at {tmp_path / 'mamba_ssm' / '__init__.py'}"
    assert report["selective_scan_cuda"] == "stand-in"
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    assert selective_scan_fn is not compat_mamba_ssm.selective_scan_fn
    inputs = make_inputs(batch=2, dim=6, N=3, L=10, B_layout="shared", with_z=True)
    assert_same(run(selective_scan_fn, inputs, delta_softplus=True), run(naive, inputs, delta_softplus=True))


def test_example_runs_as_written(clean_imports, capsys):
    """examples/vmamba_block_without_kernels.py, run as a script (in this process, to spare an interpreter
    start): the one-line install, the upstream imports, training steps, and its check against the naive scan."""
    clean_imports.setattr(sys, "argv", ["vmamba_block_without_kernels.py", "--steps", "2"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(os.path.join(ROOT, "examples", "vmamba_block_without_kernels.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_status.value.code == 0, out
    assert "'selective_scan_cuda_oflex': 'stand-in'" in out and "step 2/2: loss" in out
    assert out.rstrip().endswith("ok")
