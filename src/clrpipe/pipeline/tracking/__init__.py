"""The tracking wing: MLflow runs, the model registry and serving."""
