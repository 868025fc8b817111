"""The `llmserve` command line: one subcommand per daemon, plus local tools."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from llmserve import __version__

# name -> (module with main(argv, prog), summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "builder": ("builder_service.main", "run the builder daemon"),
    "runtime": ("runtime_service.main", "run the runtime daemon"),
    "gateway": ("gateway.main", "run the gateway daemon"),
    "chat": ("gateway.chat_cli", "chat with a model through the gateway (streaming)"),
    "check": ("gateway.check_cli", "check that a gateway is healthy and serves models"),
    "build": ("builder_service.cli", "build an engine into the store, without a daemon"),
    "up": ("llmserve.up", "start a local stack (Redis, builder, runtime, gateway) and chat"),
}


def usage() -> str:
    lines = ["usage: llmserve <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`llmserve <command> --help` describes a command's options;"]
    lines += ["`llmserve --version` (or `llmserve <command> --version`) prints the version."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"llmserve {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"llmserve: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"llmserve {name}")


if __name__ == "__main__":
    sys.exit(main())
