"""Training with the transformers Trainer: checks, model building, the Trainer, callbacks, the run.

``training.run.train(config)`` is what ``train.py`` calls. A new stage (e.g. DPO) is a new module
here with its own Trainer subclass and data, chosen in ``training.run`` by ``train.stage``.
"""
