"""Image classification over the training engine: config keys (``config``), image-folder data (``data``), the task
(model, loss, evaluation: ``task``) and the command line (``main``, run by ``classification/main.py``)."""
