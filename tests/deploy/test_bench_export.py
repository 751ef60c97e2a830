"""scripts/bench_export.py's report when a variant could not run in one row (QuadMamba-T's int8 file in OpenVINO
did not open once): the table shows "-" and names the failure, the chart is still drawn, with no bar there
(no run here)."""
import os
import runpy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
bench = runpy.run_path(os.path.join(ROOT, "scripts", "bench_export.py"), run_name="bench_export")

ROWS = [{"model": "a_tiny", "batch": 1, "images_per_s": {"torch": 10.0, "ort_static": 12.0, "int8_ov": 15.0},
         "max_rel": {"ort_static": 1e-6}},
        {"model": "b_tiny", "batch": 1, "images_per_s": {"torch": 8.0, "ort_static": 4.0},
         "max_rel": {"ort_static": 2e-6}, "failed": {"int8_ov": "cannot be broadcasted"}}]
GRAPHS = [{"model": m, "static": {"nodes": 10, "loops": 0, "mib": 1.0}, "dynamic": {"nodes": 5, "loops": 2, "mib": 1.0},
           "int8": {"nodes": 12, "mib": 0.5}} for m in ("a_tiny", "b_tiny")]


def test_a_variant_that_could_not_run_is_shown_and_named():
    table = bench["markdown"](ROWS, GRAPHS)
    row = next(line for line in table.splitlines() if line.startswith("| b_tiny"))
    assert "| 8.00 | 4.00 |" in row and "| 0.50 |" in row  # PyTorch, ORT static, their ratio
    assert "1 variant(s) could not run" in table and "b_tiny int8_ov: cannot be broadcasted" in table


def test_the_chart_is_drawn_when_a_variant_is_missing(tmp_path):
    path = str(tmp_path / "export.png")
    bench["plot"](ROWS, path, "test")
    from PIL import Image
    assert Image.open(path).size[0] > 100
