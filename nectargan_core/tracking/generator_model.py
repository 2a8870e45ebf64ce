"""The registered model's code (MLflow models-from-code): the generator as a pyfunc.

MLflow runs this file to build the model; no pickle is involved. The weights come from the
model's ``checkpoint`` artifact (the run's final full state; only its generator is read, the
file is memory-mapped) through ``torch.load(weights_only=True)``, so loading a registered model
never unpickles code.

Input and output: float32 arrays N x C x H x W with values in [-1, 1] (H and W multiples of
the model's ``side_multiple`` metadata; the trained crop size is its ``crop_size``), at most
``MAX_BATCH`` images a call. Other input is refused with :class:`InvalidInput` (HTTP 400 from
``mlflow models serve``) whose message is one line naming the problem.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from nectargan_core.inference.inputs import InputError, check_model_input
from nectargan_core.models import ModelInfo, build_generator
from nectargan_core.settings import Settings
from nectargan_core.tracking.registry import CHECKPOINT_ARTIFACT, SELECTED_ARTIFACT


class InvalidInput(MlflowException):
    """A request the model refuses: INVALID_PARAMETER_VALUE, which the scoring server answers with 400.

    The scoring server rewrites an MlflowException's ``message`` to ``Failed to predict data '<the
    whole input>'. \\nError: <message>``: many lines echoing the request. This exception keeps its
    first message, the one-line reason, so that is what the answer's ``message`` says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        self._reason = getattr(self, "_reason", value)  # the first one stays


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # The selected epoch's generator (train.select_by) when there is one, else the final state's.
        checkpoint = context.artifacts.get(SELECTED_ARTIFACT, context.artifacts[CHECKPOINT_ARTIFACT])
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        settings = Settings.model_validate(state["settings"])
        self.info = ModelInfo.of(settings)
        self.generator = build_generator(settings)
        self.generator.load_state_dict(state["generator"])
        self.generator.eval()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:
        try:
            x = check_model_input(model_input, self.info)
        except InputError as exc:
            raise InvalidInput(str(exc)) from None
        with torch.no_grad():
            return self.generator(torch.as_tensor(x)).numpy()


mlflow.models.set_model(GeneratorModel())
