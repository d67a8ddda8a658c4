"""The ``poolai`` command.

Every failure the user can cause or fix (bad config, a corrupt key, no running
node, a port in use) ends as one line on stderr and a non-zero exit status;
only bugs print a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from poolai.mesh.errors import MeshError
from poolai.mesh.short_ids import short_id
from poolai.node import __version__
from poolai.node import config as config_mod
from poolai.node.cli.errors import EXIT_ERROR, CliError
from poolai.node.cli.local_api import fetch_local
from poolai.node.logs import setup as setup_logging
from poolai.storage.errors import StoreError

log = logging.getLogger("poolai")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolai", description="PoolAI: a volunteer GPU pool.")
    parser.add_argument("--version", action="version", version=f"poolai {__version__}")
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="node data directory (default $POOLAI_DATA_DIR or ~/.poolai)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    node = sub.add_parser("node", help="run or inspect this machine's node")
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION")
    node_sub.required = True
    run = node_sub.add_parser("run", help="run the node in the foreground")
    run.add_argument("--listen", action="append", help="listen multiaddr (repeatable)")
    run.add_argument("--bootstrap", action="append", help="peer multiaddr to join through (repeatable)")
    run.add_argument("--api-host", help="address of the local API")
    run.add_argument("--api-port", type=str, help="port of the local API (0 = any)")
    run.add_argument("--max-peers", type=str, help="connections to keep open")
    run.add_argument("--log-level", help="debug, info, warning or error")
    run.add_argument("--log-format", help="text or json")
    run.set_defaults(func=_node_run)
    node_sub.add_parser("id", help="print this node's peer id").set_defaults(func=_node_id)
    node_sub.add_parser(
        "url", help="print the running node's status page URL, admin token included"
    ).set_defaults(func=_node_url)

    status = sub.add_parser("status", help="ask the running local node for its status")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    status.set_defaults(func=_status)

    cfg = sub.add_parser("config", help="inspect the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    cfg_sub.required = True
    cfg_sub.add_parser(
        "show", help="print the effective config and where each value came from"
    ).set_defaults(func=_config_show)
    for register in _command_modules():
        register(sub)
    return parser


def _command_modules() -> list:
    """``register(subparsers)`` functions of the command groups kept in their own modules."""
    from poolai.node.capacity import cli as cli_capacity
    from poolai.node.companion import cli as cli_companion
    from poolai.node.credits import cli as cli_credits
    from poolai.node.files import cli as cli_storage
    from poolai.node.jobs import cli as cli_jobs
    return [cli_capacity.register, cli_jobs.register, cli_storage.register, cli_credits.register,
            cli_companion.register]


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "listen": getattr(args, "listen", None),
        "bootstrap": getattr(args, "bootstrap", None),
        "api_host": getattr(args, "api_host", None),
        "api_port": getattr(args, "api_port", None),
        "max_peers": getattr(args, "max_peers", None),
        "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
    }


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a command a closed pipe ended


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not at exit
        return code
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except (CliError, config_mod.ConfigError, MeshError) as exc:
        print(f"poolai: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _drop_stdout() -> None:
    """Point stdout at /dev/null: its reader left (``poolai stat ID | head``), and what is
    still buffered would otherwise fail again, with a traceback, as the interpreter exits."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real descriptor behind sys.stdout
        pass
    finally:
        os.close(devnull)


def _dispatch(args: argparse.Namespace) -> int:
    return args.func(args)


def _node_run(args: argparse.Namespace) -> int:
    from poolai.node.node import Node  # libp2p import is slow; only `node run` needs it

    config = config_mod.load(args.data_dir, _flags(args))
    setup_logging(config.log_level, config.log_format)
    node = Node(config)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                running = await nursery.start(node.run)
                print(f"peer id: {running.peer_id}", flush=True)
                for addr in running.host.addrs():
                    print(f"listening: {addr}", flush=True)
                print(f"api: {running.api_url}", flush=True)
                print(f"status page: {running.status_url}", flush=True)
                async for signum in signals:
                    log.info("received %s, stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except OSError as exc:
        raise CliError(f"cannot start the node: {exc.strerror or exc}") from None
    except BaseExceptionGroup as group:
        raise CliError(_first_line(group)) from None
    return 0


def _first_line(group: BaseExceptionGroup) -> str:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, (config_mod.ConfigError, MeshError, StoreError, OSError)):
        return str(exc)
    raise group


def _node_id(args: argparse.Namespace) -> int:
    from poolai.mesh import identity
    from poolai.node.node import KEY_FILE

    config = config_mod.load(args.data_dir, {})
    path = config.data_dir / KEY_FILE
    if not path.exists():
        raise CliError(f"no identity yet in {config.data_dir}; start the node once with 'poolai node run'")
    print(identity.peer_id_of(identity.load(path)))
    return 0


def _node_url(args: argparse.Namespace) -> int:
    from poolai.node.auth import TOKEN_FILE, read_token
    from poolai.node.runtime import read_runtime_file

    config = config_mod.load(args.data_dir, {})
    info = read_runtime_file(config.data_dir)
    if not info or not info.get("api"):
        raise CliError(f"no running node found in {config.data_dir} (start one with 'poolai node run')")
    token = read_token(config.data_dir)
    if token is None:
        raise CliError(f"cannot read {config.data_dir / TOKEN_FILE} (is it yours, with mode 0600?)")
    print(f"{info['api']}/#token={token}")
    return 0


def _status(args: argparse.Namespace) -> int:
    config = config_mod.load(args.data_dir, {})
    data = fetch_local(config.data_dir, "/api/status", args.timeout)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"peer id:  {data['peer_id']}")
    print(f"version:  {data['version']}   uptime: {data['uptime_s']:.0f} s")
    for addr in data["addrs"]:
        print(f"address:  {addr}")
    print(f"peers:    {len(data['peers'])} connected, {data['known_peers']} known")
    reach = data.get("reach")
    if isinstance(reach, dict) and (reach.get("summary") or reach.get("line")):
        print(f"reach:    {reach.get('summary') or reach['line']}")
    for peer in data["peers"]:
        print(f"  {peer['peer_id']}")
    overlay = data.get("overlay")
    if overlay:
        def ids(group: str) -> str:
            return ", ".join(short_id(p["peer_id"]) for p in overlay[group]) or "-"

        print(f"overlay:  position {overlay['position']}, network size ~{overlay['size_estimate']:g}, "
              f"coordinate error {overlay['coordinate']['error']:.2f}")
        for group in ("successors", "predecessors", "long", "proximity"):
            print(f"  {group:<12} {ids(group)}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    config = config_mod.load(args.data_dir, {})
    rows = [(key, json.dumps(value), source) for key, value, source in config_mod.describe(config)]
    key_width = max(len(key) for key, _, _ in rows)
    value_width = min(40, max(len(value) for _, value, _ in rows))
    print(f"# effective configuration (file: {config.config_file})")
    for key, value, source in rows:
        print(f"{key:<{key_width}} = {value:<{value_width}}  # {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
