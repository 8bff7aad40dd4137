import json

import pytest

from opt_scale.config import RunConfig, load_config
from opt_scale.presets import PRESETS
from opt_scale.utils.config_tools import ConfigError, apply_overrides, from_dict, to_dict

from .conftest import REPO, run_cli


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match=r"model\.no_such_key"):
        load_config("tiny", ["model.no_such_key=1"])


def test_unknown_nested_key_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["train.stpes=3"])
    assert "train.stpes" in str(err.value) and "train.steps" in str(err.value)


def test_overrides_are_typed():
    cfg = load_config("tiny", ["model.cross.layers=3", "train.lr=0.5", "data.train_shards=a.tar",
                               "tasks.matching.class_probs=[0.1,0.1,0.1,0.1,0.6]", "train.zero_init=false"])
    assert cfg.model.cross.layers == 3 and isinstance(cfg.model.cross.layers, int)
    assert cfg.train.lr == 0.5
    assert cfg.tasks.matching.class_probs == (0.1, 0.1, 0.1, 0.1, 0.6)
    assert cfg.train.zero_init is False


@pytest.mark.parametrize("override,key", [
    ("model.cross.layers=two", "model.cross.layers"),
    ("model.cross.heads=5", "model.cross.heads"),          # 128 not divisible by 5
    ("tasks.matching.class_probs=[0.5,0.5,0.5,0,0]", "tasks.matching.class_probs"),
    ("train.micro_batch_size=2", "train.micro_batch_size"),  # matching needs >= 3
    ("model", "model"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny", [override])


def test_roundtrip_through_dict_for_every_preset():
    for name, preset in PRESETS.items():
        cfg = preset()
        assert from_dict(RunConfig, to_dict(cfg)) == cfg, name


def test_from_dict_rejects_unknown_keys():
    data = to_dict(PRESETS["tiny"]())
    data["data"]["bogus"] = 1
    with pytest.raises(ConfigError, match=r"data\.bogus"):
        from_dict(RunConfig, data)


def test_apply_overrides_does_not_mutate_input():
    cfg = PRESETS["tiny"]()
    apply_overrides(cfg, ["train.steps=7"])
    assert cfg.train.steps != 7


def test_opt_train_cli_refuses_unknown_key_at_once():
    proc = run_cli(["opt-train", "--config", "tiny", "--set", "model.no_such_key=1"], check=False, timeout=60)
    assert proc.returncode == 2
    assert "model.no_such_key" in proc.stderr


@pytest.mark.parametrize("override,key", [
    ("train.lr=Infinity", "train.lr"), ("train.lr=NaN", "train.lr"), ("train.weight_decay=-Infinity",
                                                                      "train.weight_decay"),
    ("tasks.matching.class_probs=[0.2,0.2,0.2,0.2,NaN]", "tasks.matching.class_probs"),
    ("train.steps=Infinity", "train.steps"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"config key '{key.replace('.', chr(92) + '.')}'"):
        load_config("tiny", [override])


def test_a_config_file_with_a_non_finite_number_is_refused(tmp_path):
    # Python's json writes and reads NaN/Infinity: a config.json edited or written by a script can carry one.
    data = to_dict(load_config("tiny"))
    data["train"]["grad_clip"] = float("nan")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config key 'train\.grad_clip' must be a finite number"):
        load_config(str(path))


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "ds_configs").glob("*.json")))
def test_every_shipped_deepspeed_config_has_only_known_keys(name):
    from opt_scale.engine.config import TrainConfig
    from opt_scale.engine.ds_config import build_ds_config
    ds = build_ds_config(TrainConfig(ds_config=name), world_size=1)
    assert ds["train_micro_batch_size_per_gpu"] == TrainConfig().micro_batch_size


@pytest.mark.parametrize("typo,key,suggestion", [
    ('"zero_optimisation": {"stage": 3}', "zero_optimisation", "zero_optimization"),
    ('"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_sise": 5e6}',
     "zero_optimization.stage3_prefetch_bucket_sise", "zero_optimization.stage3_prefetch_bucket_size"),
    ('"zero_optimization": {"stage": 2}, "flops_profiler": {"enabeld": true}', "flops_profiler.enabeld",
     "flops_profiler.enabled"),
])
def test_an_unknown_deepspeed_key_is_refused_naming_it(tmp_path, typo, key, suggestion):
    from opt_scale.engine.config import TrainConfig
    from opt_scale.engine.ds_config import build_ds_config
    path = tmp_path / "mine.json"
    path.write_text('{"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", '
                    '"train_batch_size": "auto", "gradient_clipping": "auto", ' + typo + "}")
    with pytest.raises(ConfigError) as err:
        build_ds_config(TrainConfig(ds_config=str(path)), world_size=1)
    message = str(err.value)
    assert f"unknown DeepSpeed key '{key}'" in message and f"did you mean '{suggestion}'" in message, message
    assert str(path) in message and "\n" not in message


def test_opt_train_refuses_a_deepspeed_typo_in_one_line(tiny_overrides, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text('{"zero_optimisation": {"stage": 3}}')
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *tiny_overrides, f"train.ds_config={path}"],
                   check=False, timeout=300)
    assert proc.returncode == 2
    assert f"opt-train: error: {path}: unknown DeepSpeed key 'zero_optimisation'" in proc.stderr


def test_describe_lists_every_key_with_its_value_and_meaning():
    """`opt-train --describe`: read from the comments beside the config fields, one row per key."""
    from opt_scale.config import load_config
    from opt_scale.utils.config_docs import describe_keys
    from opt_scale.utils.config_tools import to_dict

    cfg = load_config("tiny", ["train.lr=5e-4"])
    rows = {r["key"]: r for r in describe_keys(cfg)}

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    assert set(rows) == set(leaves(to_dict(cfg)))
    assert all(r["meaning"] for r in rows.values()), [k for k, r in rows.items() if not r["meaning"]]
    assert rows["train.lr"]["value"] == 5e-4 and rows["train.lr"]["meaning"] == "peak learning rate (AdamW)"
    assert rows["data.train_weights"]["type"] == "tuple[float, ...]" and "mixture" in rows["data.train_weights"]["meaning"]
    assert "hidden must divide" in rows["model.cross.heads"]["meaning"]  # inherited fields find their comment
    from .conftest import run_cli
    out = run_cli(["opt-train", "--describe", "--config", "tiny"]).stdout
    assert len(out.splitlines()) == len(rows) and out.splitlines()[0].startswith("model.text.layers")
