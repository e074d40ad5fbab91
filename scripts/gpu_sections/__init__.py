"""The GPU check's sections (``scripts/gpu_check.py`` runs them in order), one module each with ``TITLE`` and
``run(ctx, sec)``, and the harness they share (``harness``: report, deadlines, commands, the section runner)."""
