"""scripts/bench_shapes.py: its plan over the registry and what it reads back from a run (no training here:
the runs themselves are smoke-tested per family in test_learning.py)."""
import json
import math
import os
import runpy

import pytest

from vssm.cli import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
bench = runpy.run_path(os.path.join(ROOT, "scripts", "bench_shapes.py"), run_name="bench_shapes")

SEG_LOG = """\
12/05 14:56:26 - mmengine - INFO - Iter(train) [ 200/2400]  lr: 3.9332e-03  eta: 0:05:57  time: 0.1657  data_time: 0.0042
12/05 14:57:26 - mmengine - INFO - Iter(train) [ 400/2400]  lr: 3.9332e-03  eta: 0:05:57  time: 0.1500  data_time: 0.0042
12/05 14:58:26 - mmengine - INFO - Iter(train) [ 600/2400]  lr: 3.9332e-03  eta: 0:05:57  time: 0.2000  data_time: 0.0042
+------------+-------+-------+
|   Class    |  IoU  |  Acc  |
+------------+-------+-------+
| background |  97.9 | 99.35 |
|   circle   | 51.83 | 71.37 |
|   square   |  nan  |  nan  |
+------------+-------+-------+
"""
DET_LOG = """\
2026/12/05 12:43:22 - mmengine - INFO - Epoch(train) [1][400/400]  lr: 3.8941e-05  eta: 0:00:00  time: 0.25  data_time: 0.04
2026/12/05 12:53:22 - mmengine - INFO - Epoch(train) [2][400/400]  lr: 3.8941e-05  eta: 0:00:00  time: 0.27  data_time: 0.04
"""


def test_plan_follows_the_registry_and_names_unknown_families():
    args = bench["parse_args"]([])
    runs = bench["plan"](args)
    import vssm.models

    assert [(f, t) for f, t, _ in runs] == [(f.name, t) for f in vssm.models.families() for t in ("det", "seg")]
    assert all(config and os.path.isfile(config) for _, _, config in runs), "every built-in family has both configs"
    with pytest.raises(UsageError, match="unknown family nofamily; registered: vmamba"):
        bench["plan"](bench["parse_args"](["--families", "nofamily"]))


def test_reads_steps_step_time_classes_and_the_last_evaluation(tmp_path):
    (tmp_path / "seg.log").write_text(SEG_LOG)
    (tmp_path / "det.log").write_text(DET_LOG)
    steps, seconds, classes = bench["read_log"](str(tmp_path / "seg.log"))
    assert (steps, seconds) == (2400, 0.1657), "the schedule's steps, the median step time"
    assert math.isnan(classes.pop("square")), "a class absent from the images: nan"
    assert classes == {"background": 97.9, "circle": 51.83}
    steps, seconds, classes = bench["read_log"](str(tmp_path / "det.log"))
    assert (steps, classes) == (800, {}) and seconds == pytest.approx(0.26)
    old, new = tmp_path / "20261205_101010", tmp_path / "20261205_111111"
    for folder, miou in ((old, 10.0), (new, 41.36)):
        (folder / "vis_data").mkdir(parents=True)
        records = [{"loss": 0.5, "step": 2400}, {"aAcc": 92.06, "mIoU": miou, "step": 0}]
        (folder / "vis_data" / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bench["read_metrics"]({str(new)}, ("mIoU", "aAcc")) == {"mIoU": 41.36, "aAcc": 92.06}
    assert bench["run_folders"](str(tmp_path)) == {str(old), str(new)}
    row = dict(family="vmamba", task="seg", exit=0, minutes=9.5, steps=2400, step_seconds=0.1657,
               metrics={"mIoU": 41.36}, classes={"background": 97.9}, log="x")
    assert bench["format_row"](row) == "| vmamba | seg | mIoU 41.4 (background 97.9) | 2400 | 9.5 | 0.166 |"
    row.update(exit=1)
    assert "failed (exit 1; see x)" in bench["format_row"](row)
