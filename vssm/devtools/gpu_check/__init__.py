"""The pieces of ``scripts/gpu_check.sh``, the one-command check of a GPU machine (see that script).

Each module is one step, run by ``check.py`` (``scripts/gpu_check.sh``) as ``python -m vssm.devtools.gpu_check.<step>`` in its own
process (a crash or a hang costs that step only) with a deadline, and writes its figures as JSON:
``environment`` (versions, GPU, copy bandwidth), ``parity`` (every scan backend against the naive loop),
``scan_choice`` (backend timings per shape class: the table ``auto`` ranks by), ``throughput`` (models'
images/s and peak memory); ``report`` turns the figures into Markdown. With ``--dry`` a step runs on the
CPU at tiny shapes, to exercise the code where there is no GPU (the figures then mean nothing).
Everything here needs only torch, triton and timm besides vssm.
"""
