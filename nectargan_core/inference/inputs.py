"""What a generator accepts, checked before it runs: one reason, on one line, for the first problem.

The registered MLflow model (``tracking/generator_model.py``) runs this on every request, so a bad
request to ``mlflow models serve`` is answered 400 with the reason instead of a torch traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nectargan_core.models import ModelInfo

MAX_BATCH = 16  # the most images one call (one served request) may hold: memory stays bounded per request


class InputError(ValueError):
    """Input a generator cannot take; the message is one line naming the problem."""


def check_model_input(value: Any, info: ModelInfo, max_batch: int = MAX_BATCH) -> np.ndarray:
    """``value`` as float32 N x C x H x W, C the model's input channels, H and W multiples of its side
    multiple, 1 <= N <= ``max_batch``, every value finite and in [-1, 1]; else :class:`InputError`."""
    try:
        array = np.asarray(value)
    except ValueError:  # nested lists of unequal lengths
        raise InputError("inputs must be a regular N x C x H x W array; the nested lists are ragged") from None
    if array.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "S": "bytes", "O": "objects"}.get(array.dtype.kind, str(array.dtype))
        raise InputError(f"inputs must be numbers (float32 in [-1, 1]); got {kind}")
    channels, multiple = info.input_channels, info.side_multiple
    if array.ndim != 4:
        raise InputError(f"inputs must be N x {channels} x H x W (4 dimensions); got shape {_shape(array)}")
    n, c, h, w = array.shape
    if c != channels:
        raise InputError(f"inputs must have {channels} channels (N x {channels} x H x W); got shape {_shape(array)}")
    if not 1 <= n <= max_batch:
        raise InputError(f"a request holds 1 to {max_batch} images; got {n} (split the batch)")
    if h % multiple or w % multiple or not h or not w:
        raise InputError(f"height and width must be multiples of {multiple}; got {h} x {w}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError("values must be finite numbers in [-1, 1]; got NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < -1.0 or high > 1.0:
        raise InputError(f"values must be in [-1, 1]; got min {low:.4g}, max {high:.4g}")
    return array


def _shape(array: np.ndarray) -> str:
    return " x ".join(map(str, array.shape)) or "a scalar"
