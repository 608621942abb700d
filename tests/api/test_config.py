"""Config precedence (YAML < env < --set < flags) and errors that name where the bad value came from."""

import pytest

from kubetune.api import BUILTIN_MODEL, ConfigError, TrainConfig, load_config, to_yaml
from kubetune.api.sources import layer_from_env

YAML = """\
model:
  path: /models/llama
lora:
  r: 8
training:
  lr: 1.0e-4
  batch_size: 4
"""


def test_defaults_make_a_valid_config():
    cfg = TrainConfig()
    assert cfg.model.path == BUILTIN_MODEL
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.training.precision == "auto"


def test_yaml_values_are_read():
    cfg = load_config(YAML, "c.yaml")
    assert (cfg.model.path, cfg.lora.r, cfg.training.lr, cfg.training.batch_size) == ("/models/llama", 8, 1e-4, 4)


def test_precedence_yaml_env_set_flags():
    env = {"KUBETUNE_TRAINING__LR": "3e-4", "KUBETUNE_LORA__R": "32", "KUBETUNE_TRAINING__BATCH_SIZE": "2"}
    cfg = load_config(YAML, "c.yaml", env, sets=["training.lr=5e-4", "lora.r=64"], flags={("training", "lr"): 7e-4})
    assert cfg.training.batch_size == 2  # env over YAML
    assert cfg.lora.r == 64  # --set over env
    assert cfg.training.lr == 7e-4  # flag over --set


def test_seed_env_names_are_aliases():
    env = {"BASE_MODEL_PATH": "/m", "DATA_PATH": "/d/a.jsonl", "OUTPUT_DIR": "/o"}
    cfg = load_config(None, environ=env)
    assert (cfg.model.path, cfg.data.path, cfg.output_dir) == ("/m", ["/d/a.jsonl"], "/o")


def test_kubetune_env_beats_seed_alias():
    cfg = load_config(None, environ={"DATA_PATH": "/seed.jsonl", "KUBETUNE_DATA__PATH": "/mine.jsonl"})
    assert cfg.data.path == ["/mine.jsonl"]


def test_lists_from_strings_and_yaml():
    assert load_config(None, environ={"KUBETUNE_LORA__TARGET_MODULES": "q_proj, v_proj"}).lora.target_modules == [
        "q_proj",
        "v_proj",
    ]
    assert load_config(None, sets=["lora.target_modules=[k_proj]"]).lora.target_modules == ["k_proj"]
    assert load_config(None, sets=["lora.target_modules=all-linear"]).lora.target_modules == "all-linear"
    assert load_config(None, sets=["data.path=a.jsonl,b.jsonl"]).data.path == ["a.jsonl", "b.jsonl"]


@pytest.mark.parametrize("field", ["gradient_checkpointing", "compile"])
def test_a_bare_on_or_off_is_the_setting_not_a_yaml_boolean(field):
    # YAML 1.1 reads on/off as booleans, in a file, an env var and --set alike.
    env = {f"KUBETUNE_TRAINING__{field.upper()}": "off"}
    assert getattr(load_config(f"training:\n  {field}: on\n", "c.yaml").training, field) == "on"
    assert getattr(load_config(None, environ=env).training, field) == "off"
    assert getattr(load_config(None, sets=[f"training.{field}=on"]).training, field) == "on"
    with pytest.raises(ConfigError, match=f"training.{field}"):
        load_config(None, sets=[f"training.{field}=maybe"])


def test_every_problem_is_reported_with_its_origin():
    text = "training:\n  lr: abc\n  epoch: 3\nlora:\n  r: 0\n"
    with pytest.raises(ConfigError) as err:
        load_config(text, "c.yaml", {"KUBETUNE_TRAINING__BATCH_SIZE": "x"}, ["model.quantization=2bit"])
    problems = err.value.problems
    assert any(p.startswith("c.yaml:2: training.lr: Input should be a valid number") for p in problems)
    assert any(p == "c.yaml:3: training.epoch: unknown key" for p in problems)
    assert any(p.startswith("c.yaml:5: lora.r:") for p in problems)
    assert any(p.startswith("env KUBETUNE_TRAINING__BATCH_SIZE: training.batch_size:") for p in problems)
    assert any(p.startswith("--set model.quantization: model.quantization:") for p in problems)
    assert len(problems) == 5


def test_unknown_env_key_names_the_variable():
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"KUBETUNE_TRAINING__LRR": "1"})
    assert err.value.problems == ["env KUBETUNE_TRAINING__LRR: training.lrr: unknown key"]


def test_unknown_section():
    with pytest.raises(ConfigError) as err:
        load_config("optimizer:\n  lr: 1\n", "c.yaml")
    assert err.value.problems == ["c.yaml:1: optimizer: unknown key"]


def test_reserved_process_variables_are_not_config_keys():
    env = {"KUBETUNE_CONFIG": "/x.yaml", "KUBETUNE_NPROC_PER_NODE": "2", "KUBETUNE_CACHE_DIR": "/c"}
    assert layer_from_env(env).values == {}


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(ConfigError) as err:
        load_config("model:\n  path: a\n bad: [\n", "broken.yaml")
    assert err.value.problems[0].startswith("broken.yaml:3: invalid YAML")


def test_yaml_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"c\.yaml:1: the config must be a mapping"):
        load_config("- a\n- b\n", "c.yaml")


def test_malformed_set_and_env_names():
    with pytest.raises(ConfigError, match=r"--set training\.lr: expected KEY=VALUE"):
        load_config(None, sets=["training.lr"])
    with pytest.raises(ConfigError, match="malformed name"):
        load_config(None, environ={"KUBETUNE_TRAINING____LR": "1"})


def test_bounds_are_enforced():
    for bad in ["lora.dropout=1.5", "training.batch_size=0", "data.eval_split=0.95", "data.max_length=2"]:
        with pytest.raises(ConfigError):
            load_config(None, sets=[bad])


def test_to_yaml_round_trips():
    cfg = load_config(YAML, "c.yaml", sets=["data.path=a.jsonl"])
    assert load_config(to_yaml(cfg), "again.yaml") == cfg


def test_container_mounts_are_the_lowest_priority_defaults():
    from kubetune.api.sources import layer_from_mounts

    present = {"/m/model/config.json", "/m/data", "/m/output"}
    mounts = layer_from_mounts("/m/", present.__contains__)
    cfg = load_config(None, mounts=mounts)
    assert (cfg.model.path, cfg.data.path, cfg.output_dir) == ("/m/model", ["/m/data"], "/m/output")
    # A mounted config naming files under /data wins over the bare mount; env wins over both.
    cfg = load_config("data:\n  path: /m/data/train.jsonl\n", "c.yaml", {"OUTPUT_DIR": "/elsewhere"}, mounts=mounts)
    assert (cfg.data.path, cfg.output_dir) == (["/m/data/train.jsonl"], "/elsewhere")


def test_an_empty_model_mount_keeps_the_builtin_default():
    from kubetune.api.sources import layer_from_mounts

    assert load_config(None, mounts=layer_from_mounts("/", {"/model"}.__contains__)).model.path == BUILTIN_MODEL
