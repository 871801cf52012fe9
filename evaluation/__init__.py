"""Scoring answers: the official VQA accuracy, and evaluation of a predictor over merged records."""
