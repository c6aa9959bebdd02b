"""Run configs are validated once, at load: every mistake names its section and key, what was expected,
what was received, and the closest valid name. In-process (fast); tests/test_cli.py checks that the
same errors reach the terminal as a short message and exit code 2."""

from __future__ import annotations

import pytest

from strata.build import build_config, load_config
from strata.config import DataConfig, RunConfig, apply_overrides, dump_toml, parse_value
from strata.errors import ConfigError, StrataError

TINY = """\
name = "tiny"

[data]
name = "digits"
batch_size = 64

[model]
name = "cnn"
channels = [8, 16]
fc_hidden = 32

[task]
name = "classify"

[optimizer]
name = "adamw"
lr = 0.003

[trainer]
max_epochs = 2
seed = 0
"""


def raw():
    return {"name": "tiny", "data": {"name": "digits", "batch_size": 64},
            "model": {"name": "cnn", "channels": [8, 16], "fc_hidden": 32}, "task": {"name": "classify"},
            "optimizer": {"name": "adamw", "lr": 0.003}, "trainer": {"max_epochs": 2, "seed": 0}}


def error_of(make) -> str:
    with pytest.raises(ConfigError) as e:
        make()
    return str(e.value)


@pytest.fixture
def toml(tmp_path):
    def write(text: str, name: str = "run.toml"):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return write


def test_a_valid_config_loads_with_its_values_and_defaults(toml):
    cfg = load_config(toml(TINY))
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "tiny"
    assert cfg.data == DataConfig(name="digits", batch_size=64)
    assert cfg.model.name == "cnn" and cfg.model.options == {"channels": [8, 16], "fc_hidden": 32}
    assert cfg.optimizer.lr == 0.003 and cfg.optimizer.name == "adamw"
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.monitor == "val/loss"  # a default
    assert cfg.schedule.name == "constant"  # section left out entirely


def test_the_written_config_reloads_to_the_same_config(toml):
    cfg = load_config(toml(TINY))
    again = load_config(toml(dump_toml(cfg), "resolved.toml"))
    assert again == cfg


# --- unknown names, with the closest valid one --------------------------------------------------


def test_unknown_top_level_key_suggests_the_section(toml):
    msg = error_of(lambda: load_config(toml(TINY.replace("[optimizer]", "[optimzer]"))))
    assert "unknown key 'optimzer'" in msg and "did you mean 'optimizer'?" in msg


@pytest.mark.parametrize("section, line, typo, right", [
    ("optimizer", "lr = 0.003", "lrr = 0.003", "lr"),
    ("trainer", "max_epochs = 2", "max_epoch = 2", "max_epochs"),
    ("model", "fc_hidden = 32", "fc_hiden = 32", "fc_hidden"),  # the model's own Config
    ("data", "batch_size = 64", "batch_size = 64\nnormalise = true", "normalize"),  # the data set's own Config
])
def test_unknown_key_inside_a_section_names_section_key_and_suggestion(toml, section, line, typo, right):
    msg = error_of(lambda: load_config(toml(TINY.replace(line, typo))))
    wrong = typo.split("\n")[-1].split(" =")[0]
    assert f"[{section}]" in msg and f"unknown key '{wrong}'" in msg and f"did you mean '{right}'?" in msg
    assert "valid keys:" in msg and right in msg.split("valid keys:")[1]


@pytest.mark.parametrize("section, typo, right, kind", [
    ("data", "digitz", "digits", "dataset"),
    ("model", "cnnn", "cnn", "model"),
    ("task", "clasify", "classify", "task"),
])
def test_unknown_component_name_lists_the_known_ones_and_suggests(section, typo, right, kind):
    r = raw()
    r[section]["name"] = typo
    msg = error_of(lambda: build_config(r))
    assert f"[{section}] name" in msg and f"{kind} '{typo}' is unknown" in msg
    assert f"did you mean '{right}'?" in msg and "known:" in msg


def test_unknown_choice_of_a_literal_suggests():
    r = raw()
    r["optimizer"]["name"] = "adma"
    msg = error_of(lambda: build_config(r))
    assert "[optimizer] name" in msg and "'adma'" in msg and "did you mean 'adam'?" in msg


# --- wrong types and values ---------------------------------------------------------------------


@pytest.mark.parametrize("section, key, value, expected", [
    ("trainer", "max_epochs", "two", "[trainer] max_epochs: expected an integer, got 'two'"),
    ("trainer", "max_epochs", 1.5, "[trainer] max_epochs: expected an integer, got 1.5"),
    ("trainer", "deterministic", "yes", "[trainer] deterministic: expected true or false, got 'yes'"),
    ("optimizer", "lr", "fast", "[optimizer] lr: expected a number, got 'fast'"),
    ("data", "batch_size", True, "[data] batch_size: expected an integer, got True"),
    ("model", "channels", 8, "[model] channels: expected list of int, got 8"),
])
def test_wrong_type_names_the_key_the_expected_type_and_the_value(section, key, value, expected):
    r = raw()
    r[section][key] = value
    assert expected in error_of(lambda: build_config(r))


def test_negative_learning_rate_is_refused_with_the_promised_message():
    r = raw()
    r["optimizer"]["lr"] = -0.1
    assert error_of(lambda: build_config(r)) == "[optimizer] lr: must be > 0, got -0.1"


@pytest.mark.parametrize("section, key, value, fragment", [
    ("trainer", "max_epochs", 0, "[trainer] max_epochs: must be >= 1, got 0"),
    ("data", "val_fraction", 1.0, "[data] val_fraction: must be in [0, 1), got 1.0"),
    ("model", "dropout", 2, "[model] dropout: must be in [0, 1), got 2"),
    ("trainer", "device", "tpu", "[trainer] device: must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
])
def test_out_of_range_values_name_the_allowed_range(section, key, value, fragment):
    r = raw()
    r[section][key] = value
    assert fragment in error_of(lambda: build_config(r))


@pytest.mark.parametrize("section", ["data", "optimizer", "schedule", "trainer"])
def test_a_section_that_is_not_a_table_is_a_config_error(section):
    r = raw()
    r[section] = 3  # e.g. `trainer = 3` in the file, or --set trainer=3
    msg = error_of(lambda: build_config(r))
    assert f"[{section}]" in msg and "expected a table, got 3" in msg


def test_missing_required_section_and_missing_name(toml):
    r = raw()
    del r["model"]
    assert "[model]: missing section" in error_of(lambda: build_config(r))
    r = raw()
    del r["task"]["name"]
    msg = error_of(lambda: build_config(r))
    assert "[task] name: missing" in msg and "classify" in msg


# --- --set overrides ----------------------------------------------------------------------------


def test_set_overrides_are_repeatable_and_typed_like_toml(toml):
    cfg = load_config(toml(TINY), ["trainer.max_epochs=5", "optimizer.lr=1e-4", "trainer.deterministic=true",
                                   "model.channels=[4, 4, 8]", "data.limit=100", "trainer.monitor=val/acc",
                                   "name=renamed"])
    assert cfg.trainer.max_epochs == 5
    assert cfg.optimizer.lr == 1e-4
    assert cfg.trainer.deterministic is True
    assert cfg.model.options["channels"] == [4, 4, 8]
    assert cfg.data.limit == 100
    assert cfg.trainer.monitor == "val/acc"  # not valid TOML: taken as a bare string
    assert cfg.name == "renamed"


def test_the_last_of_repeated_overrides_wins(toml):
    cfg = load_config(toml(TINY), ["trainer.max_epochs=5", "trainer.max_epochs=7"])
    assert cfg.trainer.max_epochs == 7


def test_set_can_add_a_section_the_file_left_out(toml):
    cfg = load_config(toml(TINY), ["schedule.name=cosine", "schedule.warmup_steps=10"])
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_steps == 10


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value('"x"') == "x" and parse_value("adamw") == "adamw"


@pytest.mark.parametrize("item, fragments", [
    ("trainer.max_epochs", ["--set 'trainer.max_epochs'", "expected section.key=value"]),
    ("trainr.max_epochs=3", ["unknown section 'trainr'", "did you mean 'trainer'?"]),
    ("trainer.max_epochs.x=3", ["'max_epochs' is not a section"]),
])
def test_bad_set_forms_are_config_errors(item, fragments):
    msg = error_of(lambda: apply_overrides(raw(), [item]))
    for f in fragments:
        assert f in msg


def test_set_of_an_unknown_key_is_caught_at_validation(toml):
    msg = error_of(lambda: load_config(toml(TINY), ["trainer.max_epoch=3"]))
    assert "[trainer]: unknown key 'max_epoch' (did you mean 'max_epochs'?)" in msg


def test_set_of_a_bad_value_gives_the_same_message_as_the_file(toml):
    assert error_of(lambda: load_config(toml(TINY), ["optimizer.lr=-0.1"])) == "[optimizer] lr: must be > 0, got -0.1"


# --- the file itself ----------------------------------------------------------------------------


def test_missing_config_file(tmp_path):
    msg = error_of(lambda: load_config(tmp_path / "nope.toml"))
    assert "nope.toml does not exist" in msg and "strata recipes" in msg


def test_invalid_toml_names_the_file_and_where(toml):
    msg = error_of(lambda: load_config(toml("name = 'x'\n[data\nname = 'digits'\n")))
    assert "run.toml is not valid TOML" in msg and "line 2" in msg


def test_a_binary_file_is_not_valid_toml(tmp_path):
    p = tmp_path / "weights.toml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert "is not valid TOML" in error_of(lambda: load_config(p))


def test_config_errors_are_strata_errors():
    # the CLI turns every StrataError into `strata CMD: error: ...` and exit code 2
    assert issubclass(ConfigError, StrataError)


def test_every_shipped_recipe_is_a_valid_config():
    from strata.recipes import recipes_dir

    recipes = sorted(recipes_dir().glob("*.toml"))
    assert len(recipes) >= 3
    for path in recipes:
        cfg = load_config(path)  # validates every section against the registered components
        assert cfg.name and cfg.trainer.max_epochs >= 1, path.name


def test_the_config_module_imports_no_component():
    """No config <-> registry circle: the typed sections load without any data set, model or task."""
    import subprocess
    import sys

    code = ("import sys, strata.config; bad = [m for m in sys.modules if m.startswith(('strata.data', "
            "'strata.models', 'strata.tasks', 'strata.build'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
