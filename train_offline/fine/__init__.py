"""The fine stage of a fold: candidate sites, native boxes around them, the patch model, fusion chosen out of fold.

    python -m train_offline.fine --config demo --fold 0 [--resume] [--workers 2] [--set fine.epochs=12 ...]
    python -m train_offline.fine --config demo --fold 0 1 2   # every fold's sites, one box pass, then each fold
    python -m train_offline.fine --config demo --fold 1 --coarse weights   # on an exported fold's coarse models

Runs after ``train_offline.train`` in the same fold folder (it needs locator.pt and classifier.pt), or, with
``--coarse WEIGHTS``, on the fold's locator and classifier of an exported weights folder through onnxruntime: a fold
shipped without a fine stage gains one without retraining its coarse models, and ``export --run ... --keep WEIGHTS``
then adds it to that fold. Each step keeps what it wrote, so a killed run continues where it stopped:

1. ``sites``: ``fine_sites.jsonl``, per series the candidate sites through ``kernel.recipe`` as the kernel runs it.
2. ``boxes``: ``fine_boxes/<uid>.npz``, the native stack in a ``box_mm`` cube around every site and localizer; several
   folds share one pass over the DICOM series (``plan``, ``fine_prepare.json``).
3. ``dataset`` + ``train``: ``fine.pt``, the patch model (``models.FineNet``) trained on the training folds' sites.
4. ``report`` + ``train``: ``fine_summary.json`` / ``fine_oof.csv``, the validation fold through ``recipe.fine_probs``
   and ``recipe.fuse``; the best out-of-fold (fusion weight, site heatmap weight) pair is what export writes into the
   manifest (``train_offline.fusion``).
"""
