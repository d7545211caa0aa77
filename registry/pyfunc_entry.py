"""Model-from-code entry point that MLflow copies beside each logged variant."""

import sys
from pathlib import Path

import mlflow.models

# The project's code travels as one zip in the model's code folder (`registry.serving.code_bundle`):
# on the path first, so that an environment without gpt2-registry installed serves the model.
_bundle = Path(__file__).resolve().parent / "code" / "gpt2reg_code.zip"  # serving.CODE_BUNDLE, not importable yet
if _bundle.is_file() and str(_bundle) not in sys.path:
    sys.path.insert(0, str(_bundle))

from registry.serving import GPT2PyFunc  # noqa: E402

mlflow.models.set_model(GPT2PyFunc())
