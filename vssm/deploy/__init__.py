"""What deployment and inference use beside the commands ``python -m vssm.export`` / ``vssm.predict`` / ``vssm.hub``:

``runtimes``  ONNX Runtime and OpenVINO sessions behind one interface
``quantize``  post-training static int8 quantization of exported files
``cam``       class activation maps of any family's last stage (grad-cam)
"""
