"""Config loading, overrides and the errors a user sees for wrong configs."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from snowjax.cli import main
from snowjax.config import ConfigError, MeshConfig, load_config, resolve_mesh_shape, validate
from snowjax.parallel import make_mesh

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "train" / "demo.yaml"


def test_demo_config_loads_with_included_model_file() -> None:
    cfg = load_config(DEMO)
    assert cfg.model.hidden_size == 256  # from configs/model/tiny.yaml
    assert cfg.train.seq_len == 256


def test_overrides_reach_nested_keys_and_parse_yaml_values() -> None:
    cfg = load_config(DEMO, ["train.steps=10", "model.num_layers=2", "schedule.peak_lr=1e-3", "model.remat=full"])
    assert (cfg.train.steps, cfg.model.num_layers, cfg.schedule.peak_lr, cfg.model.remat) == (10, 2, 1e-3, "full")


def test_paper_model_config_matches_paper() -> None:
    cfg = load_config(None, [f"model={REPO / 'configs/model/snowcoder-1.3b.yaml'}"])
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_size, m.num_heads, m.num_kv_heads) == (24, 2048, 5632, 16, 16)
    assert (m.vocab_size, m.max_seq_len, m.tie_embeddings) == (64000, 8192, True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hidden_sz=3", "model.hidden_sz: unknown key"),
        ("train.steps=ten", "train.steps: expected an integer"),
        ("train.steps=1.5", "train.steps: expected an integer"),
        ("model.tie_embeddings=maybe", "model.tie_embeddings: expected true or false"),
        ("model.remat=sometimes", "model.remat: 'sometimes' is not one of"),
        ("train.seq_len=1024", "train.seq_len: 1024 is over model.max_seq_len 512"),
        ("model.num_kv_heads=3", "model.num_kv_heads: num_heads 4 is not a multiple of num_kv_heads 3"),
        ("train.grad_accum_steps=3", "train.global_batch_size: 16 is not divisible by train.grad_accum_steps 3"),
        ("optimizer=3", "optimizer: expected a mapping"),
    ],
)
def test_bad_configs_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(DEMO, [override])


def test_missing_file_and_missing_include(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: ../model/none.yaml\n")
    with pytest.raises(ConfigError, match="model: included file .* does not exist"):
        load_config(bad)


def test_batch_not_divisible_by_data_parallel_size() -> None:
    cfg = load_config(DEMO, ["train.global_batch_size=12", "mesh.data=8"])
    with pytest.raises(ConfigError, match="train.global_batch_size: .*data-parallel size mesh.data\\*mesh.fsdp = 8"):
        validate(cfg, num_devices=8)


def test_mesh_auto_axis_and_mismatch() -> None:
    assert resolve_mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ConfigError, match="mesh: data\\*fsdp\\*tensor = 2\\*2\\*1 = 4 does not match the 8"):
        resolve_mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
    with pytest.raises(ConfigError, match="mesh.data: cannot fill"):
        resolve_mesh_shape(MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        resolve_mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)


def test_mesh_that_does_not_match_devices_is_refused_before_compile() -> None:
    assert len(jax.devices()) == 8
    with pytest.raises(ConfigError, match="does not match the 8 available devices"):
        make_mesh(MeshConfig(data=3, fsdp=1, tensor=1))
    with pytest.raises(ConfigError, match="mesh.tensor: 8 does not divide the heads"):
        validate(load_config(DEMO, ["mesh.data=1", "mesh.tensor=8"]), num_devices=8)


def test_cli_reports_config_errors_with_exit_code_2(capsys: pytest.CaptureFixture[str], caplog) -> None:
    assert main(["config", str(DEMO), "train.bogus=1"]) == 2
    assert "train.bogus: unknown key" in caplog.text
    assert main(["config", str(DEMO), "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
