"""What deployment and inference use beside the commands ``python -m vssm.export`` / ``vssm.predict`` / ``vssm.hub``:

``runtimes``  ONNX Runtime and OpenVINO sessions behind one interface
``quantize``  post-training static int8 quantization of exported files
``cam``       class activation maps of any family's last stage (grad-cam)
``rewrites``  graph rewrites of an export into operators runtimes compute faster (same arithmetic)
``profile``   where an exported file's time goes in ONNX Runtime (``python -m vssm.deploy.profile FILE``)
"""
