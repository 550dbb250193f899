"""Training loop, evaluation, checkpoints and logging."""

from .checkpoint import load_checkpoint, save_checkpoint  # noqa: F401
from .evaluate import evaluate  # noqa: F401
from .checkpoint_eval import evaluate_checkpoint  # noqa: F401
from .trainer import train  # noqa: F401
