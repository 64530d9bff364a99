"""Config: YAML mirrors the dataclasses, overrides coerce types, mistakes name the file and line."""

import pytest

from tunesmith import UserError
from tunesmith.config import Config, field_docs, load_config, save_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_live_in_code():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.train.method == "lora" and cfg.lora.r == 16


def test_yaml_then_overrides_win(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-3\n  batch_size: 8\nlora:\n  r: 8\n")
    cfg = load_config(p, ["train.lr=1e-4", "lora.r=32", "train.packing=false", "data.too_long=error"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8 and cfg.lora.r == 32
    assert cfg.train.packing is False and cfg.data.too_long == "error"


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; the field type makes it a float
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-4\n"))
    assert cfg.train.lr == pytest.approx(1e-4)


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    p = write(tmp_path, "model:\n  name: x\ntrain:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(UserError) as err:
        load_config(p)
    msg = str(err.value)
    assert f"{p}:5" in msg and "unknown key 'train.learning_rate'" in msg and "Did you mean 'train.lr'" in msg


def test_unknown_key_suggests_a_close_one(tmp_path):
    with pytest.raises(UserError, match=r"Did you mean 'train.batch_size'"):
        load_config(write(tmp_path, "train:\n  batchsize: 4\n"))


def test_unknown_section_is_suggested(tmp_path):
    with pytest.raises(UserError, match=r":1: unknown section 'trian'.*Did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  lr: 0.1\n"))


def test_unknown_override_key_is_suggested():
    with pytest.raises(UserError, match=r"override 'lora.rank=8'.*Did you mean 'lora.r'"):
        load_config(None, ["lora.rank=8"])


def test_bad_values_are_named(tmp_path):
    with pytest.raises(UserError, match=r"train.batch_size: expected int, got 'four'"):
        load_config(None, ["train.batch_size=four"])
    with pytest.raises(UserError, match=r"c.yaml:2: train.packing: expected bool"):
        load_config(write(tmp_path, "train:\n  packing: maybe\n"))
    with pytest.raises(UserError, match="not key=value"):
        load_config(None, ["train.lr"])


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml:3: not valid YAML"):
        load_config(write(tmp_path, "train:\n  lr: 1\n   bad: [\n"))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_load_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=3e-5", "lora.target_modules=q_proj,v_proj", "compare.margin=1.5"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg


def test_data_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("data:\n  train: train.jsonl\n")
    assert load_config(p).data.train == str(tmp_path / "sub" / "train.jsonl")


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 40
    undocumented = [key for key, _, _, doc in rows if not doc]
    assert undocumented == []
    assert any(key == "train.lr" for key, *_ in rows)
    assert isinstance(Config().train.lr, float)
