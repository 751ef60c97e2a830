"""The training engine both trainers run on (``vssm.classification``, ``vssm.changedetection``).

``config``      the shared keys, reading (yacs + ``yaml.safe_load``) and validation
``process``     devices, the process group, threads, logging, seeds, the run folder and its lock
``optim``       optimizer and schedule through timm's factories
``checkpoints`` atomic checkpoints, rotation, auto-resume, bookkeeping that survives a kill
``data``        seeded loaders and sharded evaluation
``trainer``     :class:`~vssm.engine.trainer.Task` (what a task supplies) and the :class:`~vssm.engine.trainer.Trainer`
``command``     the trainers' shared command line
"""
