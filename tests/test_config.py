"""Config precedence (default < file < env < flag) and one-line errors naming the key."""

from __future__ import annotations

import pytest

from poolai.node import config


def test_defaults_need_no_file(tmp_path):
    cfg = config.load(tmp_path, {}, environ={})
    assert cfg.listen == ["/ip4/0.0.0.0/tcp/4001"]
    assert cfg.api_host == "127.0.0.1"
    assert set(cfg.sources.values()) == {"default", "flag"}  # data_dir came as an argument


def test_precedence_file_env_flag(tmp_path):
    (tmp_path / "config.toml").write_text('api_port = 9000\nmax_peers = 5\nlog_level = "debug"\n')
    env = {"POOLAI_API_PORT": "9001", "POOLAI_MAX_PEERS": "6"}
    cfg = config.load(tmp_path, {"api_port": "9002"}, environ=env)
    assert (cfg.api_port, cfg.sources["api_port"]) == (9002, "flag")
    assert (cfg.max_peers, cfg.sources["max_peers"]) == (6, "env")
    assert (cfg.log_level, cfg.sources["log_level"]) == ("debug", "file")
    assert cfg.sources["listen"] == "default"


def test_data_dir_from_env(tmp_path):
    cfg = config.load(None, {}, environ={"POOLAI_DATA_DIR": str(tmp_path)})
    assert cfg.data_dir == tmp_path and cfg.sources["data_dir"] == "env"


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        ({"api_port": "70000"}, {}, "invalid api_port from the command line: 70000 is outside"),
        ({}, {"POOLAI_API_PORT": "x"}, "invalid api_port from POOLAI_API_PORT"),
        ({"bootstrap": ["/ip4/1.2.3.4/tcp/1"]}, {}, "invalid bootstrap .* no /p2p/"),
        ({"listen": ["tcp://x"]}, {}, "invalid listen .* not a multiaddr"),
        ({"log_format": "xml"}, {}, "invalid log_format"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, flags, env, needle):
    with pytest.raises(config.ConfigError, match=needle) as info:
        config.load(tmp_path, flags, environ=env)
    assert "\n" not in str(info.value)


def test_bad_file_is_named(tmp_path):
    (tmp_path / "config.toml").write_text("api_port = [\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(tmp_path, {}, environ={})
    (tmp_path / "config.toml").write_text("colour = 'blue'\n")
    with pytest.raises(config.ConfigError, match="unknown key 'colour'"):
        config.load(tmp_path, {}, environ={})
    (tmp_path / "config.toml").write_text("max_peers = 0\n")
    with pytest.raises(config.ConfigError, match=r"invalid max_peers in .*config.toml"):
        config.load(tmp_path, {}, environ={})


@pytest.mark.parametrize(("env", "needle"), [
    ({"POOLAI_STORAGE_QUOTA": "1e999"}, "invalid storage_quota from POOLAI_STORAGE_QUOTA: .* too large"),
    ({"POOLAI_STORAGE_QUOTA": "inf"}, "invalid storage_quota from POOLAI_STORAGE_QUOTA"),
    ({"POOLAI_STORAGE_QUOTA": "nan"}, "invalid storage_quota"),
    ({"POOLAI_STORAGE_QUOTA": "-5GiB"}, "invalid storage_quota .* negative"),
    ({"POOLAI_STORAGE_QUOTA": "10XB"}, "invalid storage_quota .* unknown unit 'XB'"),
    ({"POOLAI_STORAGE_QUOTA": "2000TiB"}, "invalid storage_quota .* is outside"),
    ({"POOLAI_STORAGE_LEASE": "1e999d"}, "invalid storage_lease from POOLAI_STORAGE_LEASE"),
    ({"POOLAI_STORAGE_INTERVAL": "2d"}, "invalid storage_interval .* is outside 1..86400"),
    ({"POOLAI_STORAGE_INTERVAL": "500ms"}, "invalid storage_interval .* is outside"),
])
def test_absurd_sizes_and_durations_are_one_line_errors(tmp_path, env, needle):
    with pytest.raises(config.ConfigError, match=needle) as info:
        config.load(tmp_path, {}, environ=env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["storage_quota = inf\n", "storage_quota = nan\n", "max_peers = inf\n",
                                  "storage_lease = -inf\n", "overlay_scale = nan\n",
                                  f"overlay_scale = {10 ** 400}\n", f"inbound_rate_ip = {-10 ** 400}\n"])
def test_toml_infinities_are_config_errors(tmp_path, text):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(config.ConfigError, match=r"invalid \w+ in .*config.toml"):
        config.load(tmp_path, {}, environ={})


def test_sizes_and_durations_with_units(tmp_path):
    env = {"POOLAI_STORAGE_QUOTA": "500MB", "POOLAI_STORAGE_LEASE": "12h", "POOLAI_STORAGE_INTERVAL": "1.5m"}
    cfg = config.load(tmp_path, {}, environ=env)
    assert (cfg.storage_quota, cfg.storage_lease, cfg.storage_interval) == (500_000_000, 43200, 90)
    (tmp_path / "config.toml").write_text('storage_quota = 2147483648\nstorage_lease = "7 d"\n')
    cfg = config.load(tmp_path, {}, environ={})
    assert (cfg.storage_quota, cfg.storage_lease) == (2 << 30, 7 * 86400)
