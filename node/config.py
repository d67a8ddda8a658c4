"""Node configuration: defaults, then ``config.toml`` in the data directory, then
``POOLAI_*`` environment variables, then command-line flags (flags win).

Every setting is declared once in :data:`SETTINGS` with its parser, so the TOML
file, the environment and the flags all validate the same way, and
``poolai config show`` can say where each effective value came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from poolai.node import units
from poolai.node.credits.payout import parse_payout_setting

CONFIG_FILE = "config.toml"
_TOKEN_SHAPE = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{30,60}")
SECRET_KEYS = frozenset({"telegram_token"})  # shown as set or unset, never as the value


class ConfigError(Exception):
    """A setting has an invalid value; the message names the key and the problem."""


def default_data_dir() -> Path:
    return Path(os.environ.get("POOLAI_HOME", "~/.poolai")).expanduser()


# ----------------------------------------------------------------------------- parsers


def _multiaddr_list(value: Any) -> list[str]:
    items = _str_list(value)
    for item in items:
        if not item.startswith("/") or len(item) > 256:
            raise ValueError(f"{item!r} is not a multiaddr (it must start with '/')")
    return items


def _peer_addr_list(value: Any) -> list[str]:
    items = _multiaddr_list(value)
    for item in items:
        if "/p2p/" not in item:
            raise ValueError(f"{item!r} has no /p2p/<peer id> part")
    return items


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValueError("expected a list of strings (or a comma-separated string)")


def _number_in(kind: type[int] | type[float], lo: float, hi: float) -> Callable[[Any], Any]:
    """A ``kind`` (int or float) within lo..hi; inf, nan and numbers too large for a float
    (OverflowError: TOML's inf, an integer of 400 digits) are one-line errors."""
    noun = "an integer" if kind is int else "a number"

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {noun}")
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"expected {noun}, got {value!r}") from None
        if not lo <= number <= hi:  # nan compares false: outside
            raise ValueError(f"{number} is outside {lo}..{hi}")
        return number

    return parse


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    return _number_in(int, lo, hi)


def _float_in(lo: float, hi: float) -> Callable[[Any], float]:
    return _number_in(float, lo, hi)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return text

    return parse


def _text(max_len: int) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        if len(text) > max_len:
            raise ValueError(f"longer than {max_len} characters")
        return text

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _size_in(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = units.parse_size(value)
        if not lo <= number <= hi:
            raise ValueError(f"{value!r} is outside {lo}..{hi}")
        return number

    return parse


def _duration_in(lo: int, hi: int) -> Callable[[Any], int]:
    """Whole seconds (a fraction dropped) within lo..hi."""

    def parse(value: Any) -> int:
        seconds = int(units.parse_duration(value))
        if not lo <= seconds <= hi:
            raise ValueError(f"{value!r} is outside {lo}..{hi}")
        return seconds

    return parse


def _telegram_token(value: Any) -> str:
    text = str(value).strip()
    if text and not _TOKEN_SHAPE.fullmatch(text):
        raise ValueError("not a Telegram bot token (digits, ':', then 30-60 letters, digits, '-' or '_'; "
                         "from @BotFather)")  # the value itself is never echoed: it is a secret
    return text


def _http_url(value: Any) -> str:
    text = str(value).strip().rstrip("/")
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?", text) or len(text) > 256:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return text


def _host(value: Any) -> str:
    text = str(value).strip()
    if not text or len(text) > 253 or " " in text:
        raise ValueError(f"{value!r} is not a host name or address")
    return text


def _shown_as(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    show: Callable[[Any], Any] = _shown_as  # the value as ``config show`` prints it (parseable back)

    @property
    def env(self) -> str:
        return "POOLAI_" + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", ["/ip4/0.0.0.0/tcp/4001"], _multiaddr_list, "libp2p listen multiaddrs"),
    Setting("bootstrap", [], _peer_addr_list, "peers to join through (/ip4/../tcp/../p2p/<id>)"),
    Setting("api_host", "127.0.0.1", _host, "address of the local API and status page"),
    Setting("api_port", 8740, _int_in(0, 65535), "port of the local API (0 = any free port)"),
    Setting("api_remote", False, _bool,
            "allow api_host to be a non-loopback address (every request then needs the admin token)"),
    Setting("max_peers", 32, _int_in(1, 1000), "connections the node keeps open"),
    Setting("inbound_rate_ip", 5.0, _float_in(0.01, 10_000.0),
            "inbound connections a second one remote IP may open (bursts of 10 s of it)"),
    Setting("inbound_rate_peer", 0.5, _float_in(0.01, 10_000.0),
            "inbound connections a second one peer id may open (bursts of 10 s of it)"),
    Setting("inbound_rate_total", 20.0, _float_in(0.1, 10_000.0),
            "inbound connections a second the node accepts from everyone (bursts of 10 s of it)"),
    Setting("overlay_scale", 1.0, _float_in(0.01, 100.0),
            "multiplier on overlay maintenance periods (below 1 = faster, for small test meshes)"),
    Setting("inventory_file", "", _text(4096),
            "JSON file describing simulated devices (empty = read the GPUs through NVML)"),
    Setting("job_slots", 1, _int_in(0, 1024), "jobs this node runs at once"),
    Setting("job_queue", 16, _int_in(0, 4096), "accepted jobs that may wait for a slot"),
    Setting("job_memory_mib", 4096, _int_in(1024, 1 << 20),
            "address-space cap of a CPU job's worker process, in MiB"),
    Setting("unsandboxed_jobs", False, _bool,
            "run peers' jobs even where the worker sandbox (bubblewrap) is unavailable"),
    Setting("capacity_heartbeat", 10.0, _float_in(0.2, 3600.0), "seconds between capacity adverts"),
    Setting("capacity_expiry", 3, _int_in(2, 100), "missed heartbeats before a peer's advert expires"),
    Setting("payout_address", "", parse_payout_setting,
            "Solana address where this node's credits are paid (advertised; empty = none)"),
    Setting("redundancy_fraction", 0.05, _float_in(0.0, 1.0),
            "share of submitted jobs also run on a second peer to check the results"),
    Setting("credits_sync_interval", 60.0, _float_in(0.1, 86400.0),
            "seconds between pulls of new credit receipts from connected peers"),
    Setting("storage_quota", 10 << 30, _size_in(1 << 20, 1 << 50),
            "bytes of shares this node keeps for the mesh (e.g. 10GiB, 500MB)", units.format_size),
    Setting("storage_lease", 7 * 86400, _duration_in(1, 10 * 365 * 86400),
            "how long unpinned files put from this node are kept (e.g. 7d, 12h)", units.format_duration),
    Setting("storage_interval", 600, _duration_in(1, 86400),
            "seconds between storage upkeep passes (gc, scrub, repair, audit)", units.format_duration),
    Setting("relay_service", "auto", _choice("auto", "on", "off"),
            "serve as a circuit relay for private peers (auto: when this node is publicly reachable)"),
    Setting("relay_client", "auto", _choice("auto", "on", "off"),
            "hold relay reservations so peers can reach this node (auto: when it is private)"),
    Setting("relay_reservations", 32, _int_in(0, 100_000), "relay: peers that may hold a slot at once"),
    Setting("relay_circuits", 64, _int_in(0, 100_000), "relay: circuits open at once"),
    Setting("relay_circuit_bytes", 1 << 30, _size_in(1 << 10, 1 << 50),
            "relay: bytes one circuit may carry (both ways), then it is closed"),
    Setting("relay_circuit_time", 3600, _duration_in(1, 7 * 86400),
            "relay: how long one circuit may stay open, idle or not (e.g. 1h)"),
    Setting("relay_bandwidth", 10 << 20, _size_in(0, 1 << 40),
            "relay: bytes a second across all circuits (0 = no cap)"),
    Setting("hole_punch", True, _bool, "upgrade relayed connections to direct ones (DCUtR)"),
    Setting("telegram_token", "", _telegram_token,
            "the Telegram bot's token from @BotFather (empty = no bot); keep config.toml mode 0600"),
    Setting("telegram_api_url", "https://api.telegram.org", _http_url,
            "the Bot API server's root; methods are called at {url}/bot{token}/{method}"),
    Setting("alert_scale", 1.0, _float_in(0.01, 100.0),
            "multiplier on the alert rules' delays (below 1 = faster, for small test meshes)"),
    Setting("reach_interval", 1800, _duration_in(2, 7 * 86400),
            "seconds between reachability checks (sooner while unknown or when the address changes)"),
    Setting("log_level", "info", _choice("debug", "info", "warning", "error"), "log verbosity"),
    Setting("log_format", "text", _choice("text", "json"), "log line format"),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration of one node."""

    data_dir: Path
    listen: list[str]
    bootstrap: list[str]
    api_host: str
    api_port: int
    api_remote: bool
    max_peers: int
    inbound_rate_ip: float
    inbound_rate_peer: float
    inbound_rate_total: float
    overlay_scale: float
    inventory_file: str
    job_slots: int
    job_queue: int
    job_memory_mib: int
    unsandboxed_jobs: bool
    capacity_heartbeat: float
    capacity_expiry: int
    payout_address: str
    redundancy_fraction: float
    credits_sync_interval: float
    storage_quota: int
    storage_lease: int
    storage_interval: int
    relay_service: str
    relay_client: str
    relay_reservations: int
    relay_circuits: int
    relay_circuit_bytes: int
    relay_circuit_time: int
    relay_bandwidth: int
    hole_punch: bool
    telegram_token: str
    telegram_api_url: str
    alert_scale: float
    reach_interval: int
    log_level: str
    log_format: str
    sources: Mapping[str, str]  # key -> "default" | "file" | "env" | "flag"

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE


def load(
    data_dir: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the effective config; raises ConfigError naming the bad key."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if data_dir is not None:
        data_dir_source = "flag"
    elif environ.get("POOLAI_DATA_DIR"):
        data_dir, data_dir_source = Path(environ["POOLAI_DATA_DIR"]).expanduser(), "env"
    else:
        data_dir, data_dir_source = default_data_dir(), "default"
    file_values = _read_file(data_dir / CONFIG_FILE)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {"data_dir": data_dir_source}
    for setting in SETTINGS:
        raw, source = setting.default, "default"
        if setting.key in file_values:
            raw, source = file_values[setting.key], "file"
        if environ.get(setting.env) not in (None, ""):
            raw, source = environ[setting.env], "env"
        if setting.key in flags:
            raw, source = flags[setting.key], "flag"
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as exc:
            where = {"file": f"in {data_dir / CONFIG_FILE}", "env": f"from {setting.env}",
                     "flag": "from the command line", "default": "(default)"}[source]
            raise ConfigError(f"invalid {setting.key} {where}: {exc}") from None
        sources[setting.key] = source
    return Config(data_dir=data_dir, sources=sources, **values)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(SETTINGS_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}")
    return data


def describe(config: Config) -> list[tuple[str, Any, str]]:
    """(key, value, source) rows for ``poolai config show``; sizes and durations written as
    the config file takes them (``10GiB``, ``7d``)."""
    rows: list[tuple[str, Any, str]] = [("data_dir", str(config.data_dir), config.sources["data_dir"])]
    for setting in SETTINGS:
        value = getattr(config, setting.key)
        shown = ("(set)" if value else "") if setting.key in SECRET_KEYS else setting.show(value)
        rows.append((setting.key, shown, config.sources[setting.key]))
    return rows
