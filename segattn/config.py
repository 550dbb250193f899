"""The configuration's schema: one dataclass per config node, with the defaults of conf/*.yaml.

train.py and eval.py register these classes in Hydra's ConfigStore, so Hydra checks every key and
type when it composes conf/train.yaml or conf/eval.yaml; the library reads typed fields
(``cfg.trainer.max_iters``) instead of ``.get(key, default)`` calls that could each assume another
default. ``backbone``, ``head`` and ``dataset`` stay open dicts: each group option has keys of its
own (a head's hyper-parameters, a dataset's layout). The library knows nothing about Hydra:
``TrainConfig.from_dict(plain_dict)`` builds the same objects from a plain dict (a checkpoint's
stored config, a script's), filling what is missing with the defaults below and refusing a key the
schema does not have, with the list of valid ones.

tests/test_config.py checks that conf/train.yaml and conf/eval.yaml compose to these defaults.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# Keys a checkpoint adds to the training config it stores; not settings.
RECORD_KEYS = ("num_classes", "classes", "palette", "head_plugin")


class ConfigNode:
    """``from_dict`` and ``to_dict`` for the dataclasses below."""

    @classmethod
    def from_dict(cls, data: Any = None, where: str = ""):
        """``data`` (a dict, an instance, or None for all defaults) as ``cls``; nested nodes too.
        ``where`` is the node's dotted config path, for errors (``trainer``, ``model.aux_head``)."""
        if isinstance(data, cls):
            return data
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{where or 'the config'}: expected a mapping of keys, got {type(data).__name__}")
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise _not_a_key(where, unknown[0], fields)
        values = {}
        for name, value in data.items():
            node = _node_type(fields[name])
            path = f"{where}.{name}" if where else name
            values[name] = node.from_dict(value, path) if node is not None else value
        return cls(**values)

    @classmethod
    def check_key(cls, key: str) -> None:
        """Raise ValueError, with the valid keys, when the dotted ``key`` (``trainer.max_iters``) is not
        in this schema; below an open node (``head.num_bases``) anything goes."""
        node, parts = cls, key.split(".")
        for i, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(node)}
            if part not in fields:
                raise _not_a_key(".".join(parts[:i]), part, fields)
            node = _node_type(fields[part])
            if node is None:
                return

    def to_dict(self) -> dict:
        """A plain dict of plain values (what a checkpoint stores: ``weights_only`` loads only these)."""
        return dataclasses.asdict(self)


def _not_a_key(where: str, key: str, fields) -> ValueError:
    return ValueError(f"{f'{where}.{key}' if where else key} is not a config key; the valid keys of "
                      f"{where or 'the config'} are {', '.join(fields)}")


def _node_type(f: dataclasses.Field):
    """The ConfigNode class of a nested node's field, else None."""
    return f.type if isinstance(f.type, type) and issubclass(f.type, ConfigNode) else None


@dataclass
class TrainerConfig(ConfigNode):
    max_iters: int = 80
    batch_size: int = 8
    num_workers: int = 2
    val_interval: int = 40
    ckpt_interval: int = 0
    ckpt_interval_min: float = 0  # also last.pt whenever this many minutes passed since the last one (0: off)
    keep_ckpts: int = 3
    log_interval: int = 10
    device: str = "auto"
    amp: str = "off"
    grad_clip: Optional[float] = None
    skip_nonfinite: bool = False
    progress: bool = True
    stop_at: Optional[int] = None
    grad_accum: int = 1
    channels_last: bool = False
    compile: Any = False  # false | true (inductor) | a torch.compile backend name
    sync_bn: Optional[bool] = None
    dist_timeout_s: float = 1800
    check_memory: bool = True  # estimate a training step's memory before the first one; refuse what cannot fit


@dataclass
class OptimizerConfig(ConfigNode):
    """SGD (conf/optimizer/sgd.yaml, the default) or AdamW (adamw.yaml); each reads its own keys."""
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0005
    no_decay_norm_bias: bool = False


@dataclass
class SchedulerConfig(ConfigNode):
    """poly (conf/scheduler/poly.yaml, the default) or cosine (cosine.yaml, which has no power)."""
    name: str = "poly"
    power: float = 0.9
    min_lr: float = 0.0001
    warmup_iters: int = 0
    warmup_ratio: float = 1.0e-6


@dataclass
class AuxHeadConfig(ConfigNode):
    channels: int = 256
    weight: float = 0.4
    dropout: float = 0.1


@dataclass
class ScaleAttentionConfig(ConfigNode):
    scales: Optional[List[float]] = None
    channels: int = 512


@dataclass
class ModelConfig(ConfigNode):
    init: str = "pytorch"  # pytorch | mmseg (the recipes'): the heads' start (segattn/models/layers.py apply_init)
    residual_init: float = 0.0  # where zero-initialised residual scales start (0: the papers' start)
    init_from: Optional[str] = None
    aux_head: AuxHeadConfig = field(default_factory=AuxHeadConfig)
    scale_attention: ScaleAttentionConfig = field(default_factory=ScaleAttentionConfig)


@dataclass
class LossConfig(ConfigNode):
    """segattn/models/losses.py: ``ce``, ``ohem`` (OCNet's/CCNet's OHEM cross-entropy), ``dice``, ``jaccard``,
    ``focal``, ``lovasz``, ``tversky`` (segmentation_models_pytorch's), or a list of them summed with ``weights``."""
    name: Any = "ce"  # a name or a list of names
    weights: Optional[List[float]] = None  # with a list of names: one weight each (null: 1.0 each)
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    class_weight: Any = None  # null | auto (ENet's inverse log-frequency of the training masks) | [w_0, ...]
    smooth: float = 0.0  # dice, jaccard, tversky: added to numerator and denominator (smp's smooth)
    focal_gamma: float = 2.0
    focal_alpha: Optional[float] = None  # null: positives and negatives weigh the same
    tversky_alpha: float = 0.5  # weight of false positives
    tversky_beta: float = 0.5  # weight of false negatives (alpha = beta = 0.5: Dice)
    tversky_gamma: float = 1.0  # the mean loss to this power (focal Tversky when > 1)


@dataclass
class VisualizeConfig(ConfigNode):
    points: Optional[List[List[int]]] = None
    max_size: int = 512


@dataclass
class MlflowConfig(ConfigNode):
    """``logger=[...,mlflow]``: where the MLflow run goes (segattn/engine/trackers.py)."""
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<run dir>/mlflow.db
    experiment: str = "segattn"


@dataclass
class TrainConfig(ConfigNode):
    """conf/train.yaml."""
    backbone: Dict[str, Any] = field(default_factory=dict)
    head: Dict[str, Any] = field(default_factory=dict)
    dataset: Dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    logger: Any = field(default_factory=lambda: ["tensorboard"])  # experiment trackers: tensorboard, mlflow
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    seed: int = 0
    resume: Optional[str] = None
    plugins: List[str] = field(default_factory=list)  # modules / .py files imported first (segattn/plugins.py)

    @classmethod
    def from_dict(cls, data: Any = None, where: str = "") -> "TrainConfig":
        """As ``ConfigNode.from_dict``; the keys a checkpoint adds (``num_classes``, ``classes``,
        ``head_plugin``) are dropped."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in RECORD_KEYS}
        return super().from_dict(data, where)


@dataclass
class EvalInferenceConfig(ConfigNode):
    """Overrides of the checkpoint's ``dataset.inference``; null: as in the checkpoint."""
    mode: Optional[str] = None
    crop_size: Optional[List[int]] = None
    stride: Optional[List[int]] = None
    scales: Optional[List[float]] = None
    flip: Optional[bool] = None
    base_scale: Optional[List[int]] = None
    window_batch: Optional[int] = None
    batch_size: Optional[int] = None


@dataclass
class EvalVisualizeConfig(ConfigNode):
    points: Optional[List[List[int]]] = None
    out_dir: Optional[str] = None
    num_images: int = 2
    max_size: int = 1024


@dataclass
class EvalConfig(ConfigNode):
    """conf/eval.yaml. ``dataset`` stays open: ``+dataset.<key>=...`` overrides any key of the checkpoint's."""
    checkpoint: str = "???"
    dataset: Dict[str, Any] = field(default_factory=lambda: {"name": None, "root": None, "split": None})
    inference: EvalInferenceConfig = field(default_factory=EvalInferenceConfig)
    images: Optional[str] = None
    export_dir: Optional[str] = None
    export_format: str = "labelids"
    visualize: EvalVisualizeConfig = field(default_factory=EvalVisualizeConfig)
    device: str = "auto"
    num_workers: int = 2
    progress: bool = True
    plugins: List[str] = field(default_factory=list)  # the checkpoint's head, if a plugin's: imported first



@dataclass
class ExportConfig(ConfigNode):
    """conf/export.yaml: ``python export.py checkpoint=PATH format=...`` (segattn.deploy.export_checkpoint)."""
    checkpoint: str = "???"
    format: str = "???"
    input_size: Optional[List[int]] = None
    dynamic: Optional[bool] = None  # None: dynamic sizes where the head allows it in the format
    output: Optional[str] = None
    device: str = "cpu"
    verbose: bool = False
    plugins: List[str] = field(default_factory=list)  # the checkpoint's head, if a plugin's: imported first
