"""
The benchmark scripts that run without the shared harness still work against the code.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class InMemoryTests(SynchronousTestCase):
    def test_each_exchange_is_answered_and_pools_the_connection(self) -> None:
        """The measured loop proxies whole exchanges (it checks the first one itself)."""
        module = load("inmemory")
        for bare, vary, big in [
            (False, False, False),
            (True, False, False),
            (False, True, False),
            (False, False, True),
        ]:
            one = module.one_exchange(bare, vary, big)
            for _ in range(3):
                one()


class InstructionsTests(SynchronousTestCase):
    def test_peers_are_commands_that_exist(self) -> None:
        """Every peer's script is where the command names it (the shared ones if present)."""
        module = load("instructions")
        commands = module.peers(sys.executable)
        self.assertIn("twisted_rp", commands)
        for name, command in commands.items():
            scripts = [Path(part) for part in command if part.endswith(".py")]
            for script in scripts:
                if module.PEERS in script.parents and not module.PEERS.exists():
                    continue
                self.assertTrue(script.exists(), f"{name}: {script}")

    def test_send_reads_every_answer(self) -> None:
        """The client sends its requests on 10 connections and reads each whole answer."""
        module = load("instructions")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.addCleanup(listener.close)
        requests: list[int] = []

        def answer() -> None:
            connections = [listener.accept()[0] for _ in range(module.CONNECTIONS)]
            for _ in range(2):
                for connection in connections:
                    requests.append(connection.recv(65536).count(b"\r\n\r\n"))
                    connection.sendall(module.RESPONSE)
            for connection in connections:
                connection.close()

        server = threading.Thread(target=answer)
        server.start()
        module.send(listener.getsockname()[1], 2 * module.CONNECTIONS)
        server.join(10)
        self.assertEqual(requests, [1] * (2 * module.CONNECTIONS))
