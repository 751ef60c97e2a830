"""Detection and segmentation with OpenMMLab: every family trains and evaluates on generated data (CPU)."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

pytest.importorskip("mmdet", reason="the OpenMMLab stack is not installed (scripts/setup_mm.sh)")
pytest.importorskip("mmseg", reason="the OpenMMLab stack is not installed (scripts/setup_mm.sh)")

import vssm  # noqa: E402
from vssm.mm.backbone import backbones  # noqa: E402
from vssm.mm.flops import build_from_config  # noqa: E402
from vssm.data.shapes import make_ade, make_coco  # noqa: E402
from vssm.mm.tools import test_main as run_test  # noqa: E402
from vssm.mm.tools import train_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILIES = {"vmamba": "VMamba", "spatialmamba": "SpatialMamba", "quadmamba": "QuadMamba", "fractalmamba": "FractalMamba"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_coco(str(root / "coco"), train=4, val=4), make_ade(str(root / "ade"), train=4, val=4)


def _det_options(coco):
    """The generated set in ``coco``; two training iterations (one epoch of 4 images, 2 a batch)."""
    ann = os.path.join(coco, "annotations", "instances_val2017.json")
    return [f"train_dataloader.dataset.data_root={coco}/", f"val_dataloader.dataset.data_root={coco}/",
            f"test_dataloader.dataset.data_root={coco}/", f"val_evaluator.ann_file={ann}",
            f"test_evaluator.ann_file={ann}", "train_cfg.max_epochs=1", "train_dataloader.batch_size=2",
            "default_hooks.logger.interval=1"]


def _seg_options(ade):
    """The generated set in ``ade``; two training iterations of 2 images."""
    return [f"train_dataloader.dataset.data_root={ade}/", f"val_dataloader.dataset.data_root={ade}/",
            f"test_dataloader.dataset.data_root={ade}/", "train_cfg.max_iters=2", "train_dataloader.batch_size=2",
            "default_hooks.logger.interval=1"]


def _scalars(work_dir):
    """The records mmengine logged in a training run's scalars.json."""
    logs = sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")))
    assert logs, f"no scalars in {work_dir}"
    with open(logs[-1]) as f:
        records = [json.loads(line) for line in f]
    return records


def _evaluation(records, keys):
    """The metrics ``keys`` of the last record holding them."""
    found = [r for r in records if set(keys) <= set(r)]
    assert found, f"no evaluation with {keys}"
    return {k: found[-1][k] for k in keys}


def _tested(work_dir, keys):
    """The metrics ``keys`` a test run wrote (work_dir/TIMESTAMP/TIMESTAMP.json)."""
    files = glob.glob(os.path.join(work_dir, "*", "*.json"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return _evaluation([json.load(f)], keys)


def _assert_pictures(show_dir, image_dir):
    """--show-dir wrote one PNG per image: the image's ground truth and prediction side by side, small images
    enlarged by a whole factor to a readable size."""
    from vssm.mm.visualization import READABLE, enlargement
    for name in os.listdir(image_dir):
        picture = os.path.join(show_dir, os.path.splitext(name)[0] + ".png")
        with Image.open(picture) as drawn, Image.open(os.path.join(image_dir, name)) as image:
            factor = enlargement(image.height, image.width)
            assert factor > 1 and min(image.size) * factor >= READABLE
            assert drawn.format == "PNG" and drawn.size == (2 * factor * image.width, factor * image.height), picture


def test_enlarged_samples_scale_boxes_masks_and_class_maps():
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData, PixelData
    from mmseg.structures import SegDataSample
    from vssm.mm.visualization import enlarged, enlargement
    assert enlargement(128, 200) == 3 and enlargement(400, 500) == 1
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    det = DetDataSample()
    masks = torch.zeros(1, 2, 3, dtype=torch.bool)
    masks[0, 1, 2] = True
    det.pred_instances = InstanceData(bboxes=torch.tensor([[0.5, 0.0, 2.0, 1.5]]), masks=masks,
                                      scores=torch.tensor([0.9]), labels=torch.tensor([1]))
    big, drawn = enlarged(image, det, 2)
    assert big.shape == (4, 6, 3) and (big[::2, ::2] == image).all() and (big[1::2, 1::2] == image).all()
    assert drawn.pred_instances.bboxes.tolist() == [[1.0, 0.0, 4.0, 3.0]]
    assert drawn.pred_instances.masks[0].nonzero().tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]
    assert det.pred_instances.bboxes.tolist() == [[0.5, 0.0, 2.0, 1.5]], "the test's own sample was changed"
    seg = SegDataSample()
    seg.gt_sem_seg = PixelData(data=torch.tensor([[[0, 1, 2], [3, 4, 255]]]))
    _, drawn = enlarged(image, seg, 2)
    assert drawn.gt_sem_seg.data.shape == (1, 4, 6) and drawn.gt_sem_seg.data[0, 3, 5] == 255


DET_METRICS = ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50")
SEG_METRICS = ("aAcc", "mIoU", "mAcc")


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_rcnn_trains_and_its_checkpoint_reproduces_the_evaluation(family, shapes, tmp_path):
    coco, _ = shapes
    config = os.path.join(ROOT, "configs", "detection", family, f"mask_rcnn_{family}_fpn_shapes_nano.py")
    work = str(tmp_path / "det")
    assert train_main([config, "--work-dir", work, "--cfg-options", *_det_options(coco)]) == 0
    records = _scalars(work)
    assert any("loss" in r and r["iter"] == 2 for r in records), "two training iterations"
    trained = _evaluation(records, DET_METRICS)
    assert run_test([config, os.path.join(work, "epoch_1.pth"), "--work-dir", str(tmp_path / "test"),
                     "--show-dir", str(tmp_path / "show"), "--cfg-options", *_det_options(coco)]) == 0
    assert _tested(str(tmp_path / "test"), DET_METRICS) == trained
    _assert_pictures(str(tmp_path / "show"), os.path.join(coco, "val2017"))


@pytest.mark.parametrize("family", FAMILIES)
def test_upernet_trains_and_its_checkpoint_reproduces_the_evaluation(family, shapes, tmp_path):
    _, ade = shapes
    config = os.path.join(ROOT, "configs", "segmentation", family, f"upernet_{family}_shapes-128x128_nano.py")
    work = str(tmp_path / "seg")
    assert train_main([config, "--work-dir", work, "--cfg-options", *_seg_options(ade)]) == 0
    records = _scalars(work)
    assert any("decode.loss_ce" in r and r["iter"] == 2 for r in records), "two training iterations"
    trained = _evaluation(records, SEG_METRICS)
    assert trained["mIoU"] > 0
    assert run_test([config, os.path.join(work, "iter_2.pth"), "--work-dir", str(tmp_path / "test"),
                     "--show-dir", str(tmp_path / "show"), "--cfg-options", *_seg_options(ade)]) == 0
    assert _tested(str(tmp_path / "test"), SEG_METRICS) == trained
    _assert_pictures(str(tmp_path / "show"), os.path.join(ade, "images", "validation"))


def test_segmentation_test_time_augmentation(shapes, tmp_path):
    _, ade = shapes
    config = os.path.join(ROOT, "configs", "segmentation", "vmamba", "upernet_vmamba_shapes-128x128_nano.py")
    work = str(tmp_path / "seg")
    assert train_main([config, "--work-dir", work, "--cfg-options", *_seg_options(ade)]) == 0
    # through the launcher users run: positional arguments, GPUS and test.py's options reach test.py
    out = _tool("segmentation", "dist_test.sh", config, os.path.join(work, "iter_2.pth"), "1", "--tta",
                "--work-dir", str(tmp_path / "tta"), "--cfg-options", *_seg_options(ade))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = glob.glob(str(tmp_path / "tta" / "*" / "*.json"))
    assert metrics, "the test-time-augmented run logged no metrics"
    with open(metrics[0]) as f:
        assert "mIoU" in json.load(f)
    # its own checkpoint passes the strict load of a resume (nothing is left to train)
    from vssm.mm.tools import cli
    assert cli(train_main, [config, "--work-dir", work, "--resume", os.path.join(work, "iter_2.pth"),
                            "--cfg-options", *_seg_options(ade)]) == 0


def _tool(task, script, *args):
    """Run {task}/tools/{script} with this interpreter first on PATH."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["bash", os.path.join(ROOT, task, "tools", script), *args], capture_output=True,
                          text=True, env=env)


@pytest.mark.parametrize("task,script,given,needed", [("detection", "dist_train.sh", 0, 1),
                                                      ("segmentation", "dist_test.sh", 1, 2)])
def test_launchers_name_missing_arguments(task, script, given, needed):
    out = _tool(task, script, *["x.py"] * given)
    assert out.returncode == 2
    assert f"expected {needed} positional argument(s) before GPUS, got {given}" in out.stderr


def test_missing_files_end_in_one_error_line_and_exit_status_2(tmp_path, capsys):
    """Before: SystemExit("error: ...") from inside the tools, which a shell sees as exit status 1."""
    from vssm.mm.tools import cli
    missing = str(tmp_path / "absent.py")
    assert cli(train_main, [missing]) == 2
    assert capsys.readouterr().err == f"error: config file not found: {missing}\n"
    assert cli(run_test, [SEG_NANO, str(tmp_path / "absent.pth")]) == 2
    assert capsys.readouterr().err == f"error: checkpoint not found: {tmp_path / 'absent.pth'}\n"


@pytest.mark.parametrize("family,registered", FAMILIES.items())
def test_odd_input_size_frozen_stages_and_checkpointing(family, registered):
    cls = backbones()[registered]
    backbone = cls(arch=f"{family}_nano", frozen_stages=4).train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.modules() if not list(m.children()))  # every layer in eval
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 511, 383))
    assert [tuple(f.shape[2:]) for f in feats] == [(128, 96), (64, 48), (32, 24), (16, 12)]
    partial = cls(arch=f"{family}_nano", frozen_stages=1, with_cp=True).train()
    frozen = {n for n, p in partial.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("patch_embed.", "layers.0.", "outnorm0.")) for n in frozen) and frozen
    assert partial.grad_checkpointing
    calls = []  # blocks entered (a pre-hook: a recomputation stops before the block's end)
    for i, layer in enumerate(partial.layers):
        for block in layer.blocks:
            block.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
    out = partial(torch.randn(1, 3, 64, 64))
    in_forward, calls[:] = list(calls), []
    sum(f.sum() for f in out).backward()
    blocks = [len(layer.blocks) for layer in partial.layers]
    assert sorted(in_forward) == [i for i, n in enumerate(blocks) for _ in range(n)]
    assert sorted(calls) == [i for i, n in enumerate(blocks) for _ in range(n) if i >= 1], \
        "with_cp recomputes every trainable block in the backward, and no frozen one"
    assert all(p.grad is not None for n, p in partial.named_parameters() if n.startswith("layers.1."))


def test_pretrained_init_cfg_loads_a_classification_checkpoint_strictly(tmp_path):
    source = vssm.create_model("vmamba_nano")
    path = tmp_path / "cls.pth"
    torch.save({"model": source.state_dict(), "epoch": 10}, path)
    backbone = backbones()["VMamba"](arch="vmamba_nano", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    assert backbone.is_init
    torch.testing.assert_close(backbone.layers[1].blocks[0].op.A_logs, source.layers[1].blocks[0].op.A_logs)
    bad = backbones()["VMamba"](arch="vmamba_tiny_s1l8", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(vssm.CheckpointMismatchError):
        bad.init_weights()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown arch 'vmamba_huge'"):
        backbones()["VMamba"](arch="vmamba_huge")
    with pytest.raises(ValueError, match="frozen_stages"):
        backbones()["VMamba"](arch="vmamba_nano", frozen_stages=7)
    with pytest.raises(ValueError, match="init_cfg"):
        backbones()["VMamba"](arch="vmamba_nano", init_cfg=dict(type="Kaiming"))


@pytest.mark.parametrize("config,published", [
    ("detection/vmamba/mask_rcnn_vmamba_fpn_coco_tiny.py", 50e6),
    ("detection/spatialmamba/mask_rcnn_spatialmamba_fpn_coco_tiny.py", 46e6),
    ("segmentation/vmamba/upernet_vmamba_4xb4-160k_ade20k-512x512_tiny.py", 62e6),
    ("segmentation/spatialmamba/upernet_spatialmamba_4xb4-160k_ade20k-512x512_tiny.py", 57e6),
])
def test_published_model_sizes(config, published):
    model, _ = build_from_config(os.path.join(ROOT, "configs", config))
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - published) / published < 0.02, params


ALLOWED_BACKBONE_KEYS = {"type", "arch", "out_indices", "drop_path_rate", "init_cfg", "frozen_stages", "norm_eval",
                         "with_cp"}


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(ROOT, "configs", "detection", "*", "*.py")) +
                                          glob.glob(os.path.join(ROOT, "configs", "segmentation", "*", "*.py"))))
def test_configs_do_not_leak_foreign_backbone_keys(config):
    from mmengine.config import Config
    backbone = Config.fromfile(config).model.backbone
    assert set(backbone) <= ALLOWED_BACKBONE_KEYS, set(backbone) - ALLOWED_BACKBONE_KEYS
    assert backbone.type in FAMILIES.values()


SEG_NANO = os.path.join(ROOT, "configs", "segmentation", "vmamba", "upernet_vmamba_shapes-128x128_nano.py")


@pytest.fixture(scope="module")
def segmentor_checkpoints(tmp_path_factory):
    """Checkpoints that do not fit the nano UperNet: keys missing, unexpected and mis-shaped; a classifier's;
    one cut short."""
    root = tmp_path_factory.mktemp("checkpoints")
    state = build_from_config(SEG_NANO)[0].state_dict()
    missing, reshaped = "decode_head.conv_seg.bias", "decode_head.conv_seg.weight"
    wrong = {k: v for k, v in state.items() if k != missing}
    wrong[reshaped] = torch.zeros(7, *state[reshaped].shape[1:])
    wrong["auxiliary_head.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": wrong, "meta": {"epoch": 1, "iter": 2}}, root / "wrong.pth")
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict(), "epoch": 3}, root / "classifier.pth")
    torch.save({"state_dict": state}, root / "weights_only.pth")
    raw = (root / "weights_only.pth").read_bytes()
    (root / "cut.pth").write_bytes(raw[:len(raw) // 3])
    return {name: str(root / f"{name}.pth") for name in ("wrong", "classifier", "weights_only", "cut")}, \
        (missing, reshaped)


@pytest.mark.parametrize("case,messages", [
    ("wrong", ["does not fit the EncoderDecoder of this config", "missing in checkpoint (1): decode_head.conv_seg.bias",
               "unexpected in checkpoint (1): auxiliary_head.extra.weight",
               "shape mismatch (key, checkpoint, model) (1): ('decode_head.conv_seg.weight', (7,", "--allow-mismatch"]),
    ("classifier", ["it looks like a classification checkpoint", "unexpected in checkpoint (2): epoch, model"]),
])
def test_test_tool_stops_on_a_checkpoint_that_does_not_fit(case, messages, shapes, segmentor_checkpoints, tmp_path,
                                                          capsys):
    """Before: mmengine loaded any file non-strictly, warned deep in the log and scored random weights, exit 0."""
    from vssm.mm.tools import cli, test_main
    _, ade = shapes
    paths, _ = segmentor_checkpoints
    code = cli(test_main, [SEG_NANO, paths[case], "--work-dir", str(tmp_path), "--cfg-options", *_seg_options(ade)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), err
    for message in messages:
        assert message in err, err
    assert "Traceback" not in err
    assert not glob.glob(str(tmp_path / "*" / "*.json")), "no metrics of random weights"


def test_test_tool_loads_a_mismatched_checkpoint_only_when_asked(shapes, segmentor_checkpoints, tmp_path, caplog):
    from vssm.mm.tools import cli, test_main
    _, ade = shapes
    paths, (missing, _) = segmentor_checkpoints
    assert cli(test_main, [SEG_NANO, paths["wrong"], "--allow-mismatch", "--work-dir", str(tmp_path),
                           "--cfg-options", *_seg_options(ade)]) == 0
    assert glob.glob(str(tmp_path / "*" / "*.json")), "the run was evaluated"
    assert any("--allow-mismatch" in r.message and missing in r.message for r in caplog.records)


@pytest.mark.parametrize("case,message", [
    ("classifier", "it looks like a classification checkpoint"),
    ("weights_only", "cannot resume from"),
])
def test_train_tool_resumes_only_from_a_fitting_training_checkpoint(case, message, shapes, segmentor_checkpoints,
                                                                     tmp_path, capsys):
    from vssm.mm.tools import cli, train_main
    _, ade = shapes
    paths, _ = segmentor_checkpoints
    code = cli(train_main, [SEG_NANO, "--resume", paths[case], "--work-dir", str(tmp_path),
                            "--cfg-options", *_seg_options(ade)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not glob.glob(str(tmp_path / "iter_*.pth")), "nothing trained"


def test_dist_test_sh_with_a_truncated_checkpoint(shapes, segmentor_checkpoints, tmp_path):
    """Through the launcher users run. Before: a traceback from torch.load."""
    _, ade = shapes
    paths, _ = segmentor_checkpoints
    out = _tool("segmentation", "dist_test.sh", SEG_NANO, paths["cut"], "1", "--work-dir", str(tmp_path),
                "--cfg-options", *_seg_options(ade))
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {paths['cut']} is truncated or corrupt")
    assert "Traceback" not in out.stderr
