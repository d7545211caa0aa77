"""Model-from-code entry point that MLflow copies beside each logged variant."""

import mlflow.models

from registry.serving import GPT2PyFunc

mlflow.models.set_model(GPT2PyFunc())
