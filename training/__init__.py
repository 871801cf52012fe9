"""Training with the transformers Trainer: checks, model building, the Trainer, callbacks, the run.

``training.run.train(config)`` is what ``train.py`` calls. A new stage (KTO, ORPO, ...) is one new
module here with its ``training.stages.Stage`` subclass (model, data, collator, Trainer, checks)
plus one line in ``training.stages.STAGES``.
"""
