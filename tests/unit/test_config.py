"""Config tree: presets load, overrides apply, and every kind of mistake is one line naming file, field, value."""

import tomllib

import pytest

from hpcyuan.config import Config, config_from_dict, list_presets, load_config
from hpcyuan.errors import ConfigError, HpcyuanError

PRESETS = ["tiny", "tiny-m32", "demo", "yuan-2b", "yuan-51b", "yuan-102b", "yuan-m32"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_round_trips_through_toml(name):
    cfg = load_config(name)
    assert cfg.name == name
    again = config_from_dict(tomllib.loads(cfg.to_toml()))
    assert again == cfg


def test_presets_listed():
    assert set(PRESETS) <= set(list_presets())


def test_published_pipeline_splits():
    assert load_config("yuan-102b").parallel.layers_per_stage == (2,) * 10 + (3,) * 20 + (2,) * 2
    assert load_config("yuan-51b").parallel.layers_per_stage == (2,) * 5 + (3,) * 10 + (2,)


def test_derived_fields():
    cfg = load_config("yuan-m32")
    assert (cfg.model.head_dim, cfg.model.attention_width, cfg.model.rotary_dim) == (256, 4096, 128)
    tiny = load_config("tiny")
    assert tiny.model.head_dim == 16 and tiny.model.ffn_hidden_size == 256
    assert tiny.num_microbatches == tiny.train.global_batch_size // tiny.train.micro_batch_size


def test_overrides_are_typed_as_toml():
    cfg = load_config("tiny", ["train.lr=3e-4", "train.bf16=true", "parallel.pp=2",
                               "parallel.layers_per_stage=[1, 3]", "train.run_dir=runs/x"])
    assert cfg.train.lr == 3e-4 and cfg.train.bf16 is True
    assert cfg.parallel.layers_per_stage == (1, 3)
    assert cfg.train.run_dir == "runs/x"


# Each mistake, the message it must give (a fragment), and that it is a single line.
MISTAKES = [
    ({"model": {"hidden_size": 100, "num_heads": 3}},
     "bad.toml: model.hidden_size = 100: must be divisible by model.num_heads (3)"),
    ({"model": {"hiden_size": 64}}, "bad.toml: model.hiden_size = 64: unknown field (did you mean 'hidden_size'?)"),
    ({"modle": {"hidden_size": 64}}, "bad.toml: modle = {'hidden_size': 64}: unknown section (did you mean 'model'?)"),
    ({"train": {"lr": "fast"}}, 'bad.toml: train.lr = "fast": must be a number'),
    ({"train": {"steps": 0}}, "bad.toml: train.steps = 0: must be > 0"),
    ({"train": {"steps": 1.5}}, "bad.toml: train.steps = 1.5: must be an integer"),
    ({"train": {"bf16": 1}}, "bad.toml: train.bf16 = 1: must be true or false"),
    ({"train": {"global_batch_size": 7}},
     "bad.toml: train.global_batch_size = 7: must be a multiple of train.micro_batch_size x parallel.dp (2 x 1)"),
    ({"train": {"kernels": "fast"}}, 'bad.toml: train.kernels = "fast": must be "auto", "reference" or "extension"'),
    ({"parallel": {"pp": 2, "layers_per_stage": [1]}},
     "bad.toml: parallel.layers_per_stage = [1]: must list one layer count per pipeline stage (parallel.pp = 2)"),
    ({"parallel": {"pp": 2, "layers_per_stage": [1, 2]}, "model": {"num_layers": 4}},
     "bad.toml: parallel.layers_per_stage = [1, 2]: must sum to model.num_layers (4)"),
    ({"parallel": {"zero_stage": 3}}, "bad.toml: parallel.zero_stage = 3: must be 0, 1 or 2"),
    ({"model": {"num_experts": 4, "moe_top_k": 5}},
     "bad.toml: model.moe_top_k = 5: must be between 1 and model.num_experts (4)"),
    ({"model": {"rotary_percent": 0.0}}, "bad.toml: model.rotary_percent = 0.0: must be in (0, 1]"),
    ({"data": {"val_fraction": 0.7}}, "bad.toml: data.val_fraction = 0.7: must be in (0, 0.5)"),
    ({"slurm": {"signal": "KILL"}}, 'bad.toml: slurm.signal = "KILL": must be one of USR1, USR2, TERM, INT, HUP'),
    ({"slurm": {"nodes": 4, "min_nodes": 5}},
     "bad.toml: slurm.min_nodes = 5: must be between 1 and slurm.nodes (4), or 0 (= nodes)"),
    ({"slurm": {"min_nodes": -1}}, "bad.toml: slurm.min_nodes = -1: must be between 1 and slurm.nodes (1), or 0 (= nodes)"),
    ({"name": ""}, 'bad.toml: name = "": must be a non-empty string'),
]


@pytest.mark.parametrize("raw, message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_config_errors_are_one_line(raw, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="bad.toml")
    text = str(info.value)
    print(text)
    assert text.startswith(message)
    assert "\n" not in text


def test_file_errors(tmp_path):
    with pytest.raises(HpcyuanError, match="unknown preset 'nope': known presets are .*tiny"):
        load_config("nope")
    with pytest.raises(HpcyuanError, match="missing.toml: no such config file"):
        load_config(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nhidden_size = 3\n")
    with pytest.raises(HpcyuanError, match="broken.toml: invalid TOML"):
        load_config(str(broken))
    with pytest.raises(HpcyuanError, match="expected section.field=value"):
        load_config("tiny", ["train.steps"])


def test_error_from_file_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[model]\nnum_heads = 0\n")
    with pytest.raises(ConfigError, match=f"^{path}: model.num_heads = 0: must be > 0$"):
        load_config(str(path))


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.model.hidden_size = 3
