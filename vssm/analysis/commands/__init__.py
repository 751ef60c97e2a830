"""The analysis tools' command lines, run by the thin scripts in ``analyze/`` (``python analyze/<tool>.py``)."""
