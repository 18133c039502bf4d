"""Training engine: optimizers, learning-rate schedules and the training loop.

Inference (the predictor, pose decoding, depth refinement, dataset inference) is
:mod:`fastgdr.inference`.
"""
