"""The registered model's code (MLflow models-from-code): the generator as a pyfunc.

MLflow runs this file to build the model; no pickle is involved. The weights come from the
model's ``checkpoint`` artifact (the run's final full state; only its generator is read, the
file is memory-mapped) through ``torch.load(weights_only=True)``, so loading a registered model
never unpickles code.

Input and output: float32 arrays N x C x H x W with values in [-1, 1] (H and W multiples of
the model's ``side_multiple`` metadata; the trained crop size is its ``crop_size``).
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from nectargan_core.models import build_generator
from nectargan_core.settings import Settings
from nectargan_core.tracking.registry import CHECKPOINT_ARTIFACT, SELECTED_ARTIFACT


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # The selected epoch's generator (train.select_by) when there is one, else the final state's.
        checkpoint = context.artifacts.get(SELECTED_ARTIFACT, context.artifacts[CHECKPOINT_ARTIFACT])
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        self.generator = build_generator(Settings.model_validate(state["settings"]))
        self.generator.load_state_dict(state["generator"])
        self.generator.eval()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:
        with torch.no_grad():
            return self.generator(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()


mlflow.models.set_model(GeneratorModel())
