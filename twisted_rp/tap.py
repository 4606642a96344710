"""
The command line of C{twistd reverseproxy}: its options and the service they make.

Three ways to run::

    twistd -n reverseproxy --config proxy.toml
    twistd -n reverseproxy --listen tcp:8080 --backend 10.0.0.1:8000 --backend 10.0.0.2:8000
    twistd -n reverseproxy --demo

C{--check-config} validates a configuration file without starting anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.python import usage

from twisted_rp.config import (
    MAX_WORKERS,
    Config,
    ConfigError,
    check_workers,
    load_config,
    quick_config,
)

if TYPE_CHECKING:
    from twisted.application.service import IService

DEFAULT_LISTEN = "tcp:8080"

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _help_text(method: _Method) -> _Method:
    """Make an option method's docstring one paragraph, as C{--help} prints it verbatim."""
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


class Options(usage.Options):
    """
    Options of C{twistd reverseproxy}.

    After parsing, C{self["listen"]} and C{self["backend"]} are lists (empty when not given).
    """

    synopsis = (
        "[--config FILE [--check-config] | --listen ENDPOINT --backend HOST:PORT ... | --demo]"
    )

    longdesc = (
        "Run the reverse proxy from a TOML configuration file (--config), or in quick mode "
        "from the command line: every --listen endpoint forwards all requests to the --backend "
        "servers.  --demo starts three demo backends behind a proxy on 127.0.0.1:8080."
    )

    optParameters = [
        ["config", "c", None, "Read the configuration from this TOML file."],
        [
            "balance",
            None,
            None,
            "Quick mode: how to choose among the --backend servers [default: round_robin].",
        ],
        [
            "workers",
            None,
            None,
            "Serve the listeners with this many worker processes, supervised by this one "
            "[default: [server] workers, else 1].",
            int,
        ],
    ]

    optFlags = [
        [
            "check-config",
            None,
            "Validate the --config file, print 'OK: FILE' and exit 0, or print the first error "
            "and exit 1; nothing is started.",
        ],
        [
            "demo",
            None,
            "Start three demo backends on 127.0.0.1:8081-8083 and the proxy on 127.0.0.1:8080 "
            "in front of them.",
        ],
    ]

    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.toml")})

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self.quick: Config | None = None

    @_help_text
    def opt_listen(self, endpoint: str) -> None:
        """
        Quick mode: accept HTTP connections here: a port (8080), HOST:PORT (127.0.0.1:8080) or
        a Twisted server endpoint (tcp:8080:interface=::1); repeatable [default: tcp:8080].
        """
        self["listen"].append(endpoint)

    @_help_text
    def opt_backend(self, address: str) -> None:
        """
        Quick mode: forward requests to this server: HOST:PORT, [IPv6]:PORT or
        http://HOST:PORT; repeatable.
        """
        self["backend"].append(address)

    def postOptions(self) -> None:
        quick_mode = bool(self["listen"] or self["backend"] or self["balance"] is not None)
        if self["workers"] is not None and not 1 <= self["workers"] <= MAX_WORKERS:
            raise usage.UsageError(f"--workers must be from 1 to {MAX_WORKERS}")
        if self["demo"]:
            if self["config"] is not None or quick_mode or self["check-config"] or self["workers"]:
                raise usage.UsageError(
                    "--demo takes no other option; drop --config, --check-config, --listen, "
                    "--backend, --balance and --workers"
                )
            return
        if self["config"] is not None:
            if quick_mode:
                raise usage.UsageError(
                    "--listen, --backend and --balance are for running without a configuration "
                    "file; with --config, put listeners and backends in the file"
                )
            if self["check-config"]:
                self._check_config(self["config"])
            return
        if self["check-config"]:
            raise usage.UsageError("--check-config needs the file to check: add --config FILE")
        if not quick_mode:
            raise usage.UsageError(
                "nothing to run: give --config FILE, or --backend HOST:PORT (with --listen "
                "ENDPOINT, default tcp:8080), or --demo to try the proxy"
            )
        if not self["backend"]:
            raise usage.UsageError("quick mode needs at least one --backend HOST:PORT")
        try:
            self.quick = quick_config(
                self["listen"] or [DEFAULT_LISTEN],
                self["backend"],
                self["balance"] if self["balance"] is not None else "round_robin",
            )
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None

    def _check_config(self, path: str) -> None:
        """
        Print the verdict on the file at C{path} and end the process.
        """
        from twisted_rp.service import check_files

        try:
            config = load_config(path)
            check_workers(config, self["workers"] or 1)
            check_files(config)
        except ConfigError as error:
            print(error, file=sys.stderr)
            sys.exit(1)
        print(f"OK: {path}")
        sys.exit(0)


def load_or_exit(path: str) -> Config:
    """
    Load the configuration file at C{path}; if it is invalid, print the error on stderr and end
    the process with status 1 (twistd would print a traceback for an exception).
    """
    try:
        return load_config(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(1) from None


def makeService(options: Options) -> IService:
    """
    Build the service C{options} describe, on the global reactor.
    """
    from twisted.internet import reactor

    if options["demo"]:
        from twisted_rp.demo import demo_instructions, make_demo_service

        # Printed before twistd redirects stdout into its log, so that it reads as plain text.
        print(demo_instructions())
        return make_demo_service(reactor)

    from twisted_rp.service import build_service

    config = options.quick if options.quick is not None else load_or_exit(options["config"])
    try:
        workers = options["workers"]
        if (workers or config.server.workers) > 1:
            from twisted_rp.workers import build_master, master_options

            return build_master(config, reactor, workers, master_options(options))
        return build_service(config, reactor)
    except ConfigError as error:
        # Problems found only when building (a certificate file, an access log file) end the
        # process like a bad file does: one line, status 1, no traceback.
        print(error, file=sys.stderr)
        raise SystemExit(1) from None
