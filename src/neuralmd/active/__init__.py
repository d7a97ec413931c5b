"""Active learning: committee exploration, uncertainty selection, parallel labelling, retraining."""
