"""The run configuration: model, tasks, data and training, with presets.

``load_config("tiny", ["model.cross.layers=4", ...])`` starts from a preset
(or a JSON file written by a previous run) and applies dotted overrides; an
unknown key or a bad value is an error that names the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from opt_scale.data.config import DataConfig
from opt_scale.engine.config import TrainConfig
from opt_scale.model.config import ModelConfig
from opt_scale.tasks.config import TasksConfig
from opt_scale.utils.config_tools import ConfigError, apply_overrides, from_dict, require, validate


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        from opt_scale.tasks.registry import trains_opt
        if self.tasks.matching.weight > 0 and trains_opt(self.train.task):
            require(self.train.micro_batch_size >= 3, "train.micro_batch_size",
                    "the 5-way matching task swaps image/audio between samples of a micro-batch and needs "
                    f"at least 3 per micro-batch (got {self.train.micro_batch_size}); raise it or set "
                    "tasks.matching.weight=0")
        if self.tasks.label.weight > 0:
            require(bool(self.data.labels or self.tasks.label.names), "data.labels",
                    "tasks.label (vqa, classify) needs the label vocabulary: the .labels.json written by "
                    "`opt-shards pairs --format vqa|classes|imagefolder`")


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    from opt_scale.presets import PRESETS
    if name_or_path in PRESETS:
        cfg = PRESETS[name_or_path]()
    elif Path(name_or_path).is_file():
        try:
            data = json.loads(Path(name_or_path).read_text())
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
            raise ConfigError(f"--config {name_or_path!r} is not a readable JSON file ({err})") from err
        cfg = from_dict(RunConfig, data)
    else:
        raise ConfigError(f"--config {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    return apply_overrides(cfg, overrides or []) if overrides else validate(cfg)
