"""Run timm's own generic model tests (its tests/test_models.py) over vssm's models, as timm's CI runs them.

timm's CI runs ``pytest -m MARKER tests/test_models.py`` once per marker; the tests take their models from
``timm.list_models(...)``. Here the same file runs once with the markers base, cfg, features, fxforward,
fxbackward and torchscript, with vssm imported first (its models join timm's registry) and every test
whose ``model_name`` is not one of the selected vssm models deselected. timm skips its own non-scriptable
models through ``EXCLUDE_JIT_FILTERS`` in that file; vssm's are skipped here with the reason its token
mixers give (``vssm.models.blocks.TORCHSCRIPT_UNSUPPORTED``).

timm parametrizes ``test_model_forward_intermediates`` and ``..._features`` over a list of its own modules,
which no outside model can join; the script then calls those two test functions unchanged for each model.

Nothing is fetched: pass the ``tests`` folder of a timm checkout at the installed version, e.g.
``git clone -b v1.0.31 --depth 1 https://github.com/huggingface/pytorch-image-models /tmp/timm-src`` then

    nice python scripts/timm_model_tests.py /tmp/timm-src/tests            # the 4 nano and 4 tiny models
    nice python scripts/timm_model_tests.py /tmp/timm-src/tests --sizes nano
"""
import argparse
import collections
import importlib.util
import os
import re
import shlex
import sys
import time

MARKERS = ("base", "cfg", "features", "fxforward", "fxbackward", "torchscript")
INTERMEDIATES_TESTS = ("test_model_forward_intermediates", "test_model_forward_intermediates_features")


def selected_models(sizes):
    """The registered vssm models of the given sizes (tiny: each family's T model)."""
    import vssm
    names = []
    for family in vssm.models.families():
        names += [family.nano] * ("nano" in sizes) + [family.tiny] * ("tiny" in sizes)
    return names


def family(model_name: str) -> str:
    import vssm
    return vssm.models.family_of(model_name).name


class VssmSelection:
    """pytest plugin: keeps only the selected vssm models' tests, skips the non-scriptable ones with their
    reason, and records every outcome."""

    def __init__(self, models):
        self.models = set(models)
        self.results = []  # (test function, model, outcome, seconds, reason)

    def pytest_configure(self, config):
        for marker in MARKERS + ("timeout",):  # timm registers these in its pyproject.toml
            config.addinivalue_line("markers", f"{marker}: timm test marker")

    def pytest_collection_modifyitems(self, config, items):
        from vssm.models.blocks import TORCHSCRIPT_UNSUPPORTED
        import pytest
        keep, drop = [], []
        for item in items:
            name = getattr(item, "callspec", None) and item.callspec.params.get("model_name")
            (keep if name and name.split(".")[0] in self.models else drop).append(item)
        for item in keep:
            if item.originalname == "test_model_forward_torchscript":
                item.add_marker(pytest.mark.skip(reason=f"excluded from TorchScript: {TORCHSCRIPT_UNSUPPORTED}"))
        items[:] = keep
        config.hook.pytest_deselected(items=drop)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            if report.when == "teardown" and report.outcome == "passed":
                return
            name = report.nodeid.split("::")[-1]
            test, model = name.split("[")[0], name.split("-")[-1].rstrip("]")
            reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else ""
            if report.failed:
                reason = str(report.longrepr).strip().splitlines()[-1][:200]
            self.results.append((test, model, report.outcome, report.duration, reason))


def run_intermediates_tests(test_file, models, results):
    """timm's forward_intermediates tests, called unchanged for each selected model."""
    spec = importlib.util.spec_from_file_location("timm_test_models", test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for test in INTERMEDIATES_TESTS:
        for model in models:
            start = time.perf_counter()
            try:
                getattr(module, test)(model, 1)
                outcome, reason = "passed", ""
            except Exception as e:  # a failed assertion or an error, reported like pytest does
                outcome, reason = "failed", f"{type(e).__name__}: {e}"[:200]
            results.append((test, model, outcome, time.perf_counter() - start, reason))
            print(f"{test}[1-{model}] {outcome.upper()} ({time.perf_counter() - start:.1f}s)", flush=True)


def print_tables(results):
    """Counts of passed / failed / skipped per test and per family, then every skip and failure."""
    def table(key, title):
        counts = collections.defaultdict(collections.Counter)
        for r in results:
            counts[key(r)][r[2]] += 1
        print(f"\n| {title} | passed | failed | skipped |\n|---|---|---|---|")
        for k in sorted(counts):
            c = counts[k]
            print(f"| {k} | {c['passed']} | {c['failed']} | {c['skipped']} |")
        total = collections.Counter(r[2] for r in results)
        print(f"| total | {total['passed']} | {total['failed']} | {total['skipped']} |")
    table(lambda r: r[0], "test")
    table(lambda r: family(r[1]), "family")
    reasons = collections.defaultdict(list)
    for test, model, outcome, seconds, reason in results:
        if outcome != "passed":
            reasons[(outcome, reason)].append(f"{test}[{model}]")
    for (outcome, reason), tests in reasons.items():
        print(f"\n{outcome} ({len(tests)}): {reason}\n  " + "\n  ".join(tests))


def checkout_version(test_file: str):
    """The timm version of the checkout holding ``test_file`` (its ``timm/version.py``), or None."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(test_file))), "timm", "version.py")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read())
    return found.group(1) if found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", help="the tests/ folder of a timm checkout (or its test_models.py)")
    parser.add_argument("--sizes", nargs="+", choices=("nano", "tiny"), default=["nano", "tiny"])
    parser.add_argument("--markers", nargs="+", choices=MARKERS, default=list(MARKERS))
    parser.add_argument("--no-intermediates", action="store_true", help="skip the forward_intermediates tests")
    args = parser.parse_args()
    test_file = args.tests if args.tests.endswith(".py") else os.path.join(args.tests, "test_models.py")
    if not os.path.isfile(test_file):
        sys.exit(f"error: {test_file} not found; pass the tests/ folder of a timm checkout (see --help)")

    import pytest
    import timm
    import vssm  # registers the models in timm before the test file lists them
    checkout = checkout_version(test_file)
    if checkout is None:
        print(f"warning: no timm/version.py beside {test_file}: cannot check that these tests are timm "
              f"{timm.__version__}'s", file=sys.stderr, flush=True)
    elif checkout != timm.__version__:
        print(f"warning: the checkout's tests are timm {checkout}'s but timm {timm.__version__} is installed: "
              f"tests of another version may fail for reasons that are not vssm's (clone -b v{timm.__version__})",
              file=sys.stderr, flush=True)
    models = selected_models(args.sizes)
    print(f"timm {timm.__version__}, vssm {vssm.__version__}, tests {test_file}\nmodels: {' '.join(models)}",
          flush=True)
    plugin = VssmSelection(models)
    pytest_args = [test_file, "-m", " or ".join(args.markers), "-rs", "-v", "-p", "no:cacheprovider",
                   "--import-mode=importlib", "-o", "addopts=", "--durations=10"]
    print("pytest " + shlex.join(pytest_args), flush=True)
    status = pytest.main(pytest_args, plugins=[plugin])
    results = plugin.results
    if not args.no_intermediates and "features" in args.markers:
        run_intermediates_tests(test_file, models, results)
    print_tables(results)
    failed = any(r[2] == "failed" for r in results)
    sys.exit(1 if failed or status not in (0, 5) else 0)


if __name__ == "__main__":
    main()
