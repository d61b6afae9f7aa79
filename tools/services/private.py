"""Private, throwaway servers for tests that must break or secure them.

The shared services of ``tools/services.sh`` must not be stopped or reconfigured by one test,
so the tests that restart a broker (fault injection) or need TLS and SASL (Kafka security,
secret hygiene) start their own from the same cached jars (``make services`` fetched them):

- :class:`KafkaBroker`: a single-node KRaft broker on free loopback ports. Always a
  ``PLAINTEXT`` listener (for test set-up); with a :class:`Tls` bundle also a ``SASL_SSL``
  listener (SCRAM-SHA-512 users created at format time, PLAIN users from the JAAS config) and
  an ``SSL`` listener that requires a client certificate. :meth:`KafkaBroker.restart` keeps the
  data directory and the ports.
- :class:`S3Proxy`: s3proxy with its filesystem backend and the given credentials.
- :func:`make_tls`: a throwaway CA (``openssl``), a server certificate for 127.0.0.1 and
  localhost, a client certificate, and the broker's PKCS#12 keystore.
- :class:`AkisnapRun`: ``akisnap run`` as a subprocess with a given environment, its log in a
  file, readiness from ``/readyz``; killed or stopped on demand.

Also a small CLI for people::

    python tools/services/private.py kafka DIR [--secure]   # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.4.0"
S3PROXY_VERSION = "4.1.0"
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("AKISNAP_CACHE") or Path.home() / ".cache" / "akisnap")
KAFKA_LIBS = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
S3PROXY_HOME = CACHE / f"s3proxy-{S3PROXY_VERSION}"
S3PROXY_JAR = S3PROXY_HOME / "libs" / f"s3proxy-{S3PROXY_VERSION}-jar-with-dependencies.jar"
KEYSTORE_PASSWORD = "akisnap-test-keystore"
STARTED_LINE = "Kafka Server started"


class ServiceError(RuntimeError):
    """A private server could not be started (the message says why, with its log tail)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while choosing)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServiceError("java not found (Java 17 or newer is needed)")
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """A throwaway CA with a broker keystore and a client certificate (all PEM but the
    keystore, which is PKCS#12 with :data:`KEYSTORE_PASSWORD`)."""

    ca_cert: Path
    server_keystore: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {done.stderr.strip()[-2000:]}")


def make_tls(directory: Path) -> Tls:
    """Create the CA, the server (127.0.0.1, localhost) and client certificates in
    ``directory``; a second, unrelated CA too (for 'wrong CA' tests)."""
    if shutil.which("openssl") is None:
        raise ServiceError("openssl not found: it makes the throwaway test CA")
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-subj", f"/CN=akisnap test {ca}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
    extensions = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in extensions.items():
        (directory / f"{name}.ext").write_text(ext)
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=akisnap-test-{name}", cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip
    _openssl(
        "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
        "-name", "broker", "-out", "server.p12", "-passout", f"pass:{KEYSTORE_PASSWORD}",
        cwd=directory,
    )  # fmt: skip
    return Tls(
        ca_cert=directory / "ca.pem",
        server_keystore=directory / "server.p12",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca_cert=directory / "other-ca.pem",
    )


# -- Kafka ------------------------------------------------------------------------------------


@dataclass
class KafkaBroker:
    """One private KRaft broker under ``workdir``; :meth:`start` formats it the first time."""

    workdir: Path
    tls: Tls | None = None
    scram_users: Mapping[str, str] = field(default_factory=dict)
    """SCRAM-SHA-512 users (name -> password) of the SASL_SSL listener."""
    plain_users: Mapping[str, str] = field(default_factory=dict)
    """PLAIN users (name -> password) of the SASL_SSL listener."""
    partitions: int = 4
    heap: str = "384m"

    def __post_init__(self) -> None:
        ports = free_ports(4)
        self.port, self.controller_port, self.sasl_ssl_port, self.ssl_port = ports
        self._process: subprocess.Popen[bytes] | None = None
        self._formatted = False
        self._started = False
        self.log = self.workdir / "kafka.log"

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _properties(self) -> str:
        data = self.workdir / "data"
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        lines: list[str] = []
        if self.tls is not None:
            listeners += [
                f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}",
                f"SSL://127.0.0.1:{self.ssl_port}",
            ]
            protocols += ["SASL_SSL:SASL_SSL", "SSL:SSL"]
            plain = " ".join(
                f'user_{name}="{password}"' for name, password in self.plain_users.items()
            )
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "listener.name.sasl_ssl.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};",
                "listener.name.ssl.ssl.client.auth=required",
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.location={self.tls.server_keystore}",
                f"ssl.keystore.password={KEYSTORE_PASSWORD}",
                f"ssl.key.password={KEYSTORE_PASSWORD}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.tls.ca_cert}",
            ]
        advertised = ",".join(listeners)
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners={advertised}",
                f"listener.security.protocol.map={','.join(protocols)}",
                "inter.broker.listener.name=PLAINTEXT",
                "controller.listener.names=CONTROLLER",
                f"log.dirs={data}",
                f"num.partitions={self.partitions}",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                "auto.create.topics.enable=false",
                "group.initial.rebalance.delay.ms=0",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "share.coordinator.state.topic.num.partitions=4",
                "log.retention.hours=24",
                *lines,
                "",
            ]
        )

    def _jvm(self) -> list[str]:
        if not (KAFKA_LIBS / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise ServiceError(f"Kafka jars missing in {KAFKA_LIBS}: run `make services` once")
        return [
            _java(), "-Xms64m", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
            "-cp", f"{KAFKA_LIBS}/*",
        ]  # fmt: skip

    def _format(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.properties"
        config.write_text(self._properties())
        # Kafka's option parser reads an id that starts with "-" as an option: avoid those.
        cluster = "-"
        while cluster.startswith("-"):
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        command = [
            *self._jvm(), "kafka.tools.StorageTool", "format", "--standalone",
            "--cluster-id", cluster, "--config", str(config),
        ]  # fmt: skip
        for name, password in self.scram_users.items():
            command += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServiceError(f"kafka storage format failed:\n{done.stdout}\n{done.stderr}")
        self._formatted = True

    def start(self, timeout: float = 90.0) -> None:
        """Start (formatting the storage the first time) and wait until it serves. A first
        start that loses one of its ports to another process tries again on new ones."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return
            except ServiceError:
                if self._started or attempt == 2 or not self._lost_a_port():
                    raise
            self.port, self.controller_port, self.sasl_ssl_port, self.ssl_port = free_ports(4)
            shutil.rmtree(self.workdir / "data", ignore_errors=True)
            self._formatted = False

    def _lost_a_port(self) -> bool:
        return "Address already in use" in _tail(self.log, 400)

    def _start_once(self, timeout: float) -> None:
        if not self._formatted:
            self._format()
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [*self._jvm(), "kafka.Kafka", str(self.workdir / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._wait_started(offset, timeout)
        self._started = True

    def _wait_started(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.sasl_ssl_port, self.ssl_port] if self.tls else [])
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise ServiceError(f"kafka exited while starting:\n{_tail(self.log)}")
            with self.log.open("rb") as handle:
                handle.seek(offset)
                started = STARTED_LINE in handle.read().decode(errors="replace")
            if started and all(_port_open(port) for port in ports):
                return
            time.sleep(0.2)
        raise ServiceError(f"kafka not started within {timeout:.0f}s:\n{_tail(self.log)}")

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        """SIGTERM (or SIGKILL) the broker and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self, *, kill: bool = False, down_seconds: float = 0.0) -> None:
        """Stop, stay down ``down_seconds``, start again on the same ports and data."""
        self.stop(kill=kill)
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        self.stop()


# -- S3 ---------------------------------------------------------------------------------------


@dataclass
class S3Proxy:
    """A private s3proxy (filesystem backend) accepting one access key / secret key."""

    workdir: Path
    access_key: str
    secret_key: str

    def __post_init__(self) -> None:
        (self.port,) = free_ports(1)
        self._process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "s3proxy.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        if not S3PROXY_JAR.is_file():
            raise ServiceError(f"{S3PROXY_JAR} is missing: run `make services` once")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3proxy.conf"
        config.write_text(
            f"s3proxy.endpoint={self.endpoint}\n"
            "s3proxy.authorization=aws-v2-or-v4\n"
            f"s3proxy.identity={self.access_key}\n"
            f"s3proxy.credential={self.secret_key}\n"
            "jclouds.provider=filesystem\n"
            f"jclouds.filesystem.basedir={self.workdir / 'data'}\n"
        )
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [_java(), "-Xms32m", "-Xmx192m", "-XX:TieredStopAtLevel=1",
                 "-Djava.awt.headless=true", "-jar", str(S3PROXY_JAR), "--properties", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self._process.poll() is not None:
                raise ServiceError(f"s3proxy exited while starting:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise ServiceError(f"s3proxy not listening within {timeout:.0f}s")
            time.sleep(0.2)

    def make_bucket(self, name: str) -> None:
        """Create a bucket (s3proxy's filesystem backend: a directory)."""
        (self.workdir / "data" / name).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# -- the daemon -------------------------------------------------------------------------------


@dataclass
class AkisnapRun:
    """``akisnap run`` (``python -m daemon.cli run`` in ``repo``) with ``env``; each start
    appends to ``log``. The metrics port is chosen here unless ``env`` sets one."""

    repo: Path
    env: Mapping[str, str]
    log: Path

    def __post_init__(self) -> None:
        self.env = dict(self.env)
        self.port = int(self.env.get("AKISNAP_METRICS_PORT") or free_ports(1)[0])
        self.env["AKISNAP_METRICS_PORT"] = str(self.port)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("akisnap run is not started")
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run"],
                cwd=self.repo, env=dict(self.env), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1

    def ready(self) -> bool:
        """True once /readyz answers 200; raises if the process has exited."""
        if self.process is None or self.process.poll() is not None:
            raise ServiceError(f"akisnap run exited:\n{_tail(self.log, 60)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return int(r.status) == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServiceError(f"akisnap run not ready in {timeout:.0f}s:\n{_tail(self.log)}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit code (SIGKILL after ``timeout``: then -9)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def running(server: KafkaBroker | S3Proxy) -> Iterator[None]:
    try:
        server.start()
        yield
    finally:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    kafka = sub.add_parser("kafka", help="a private broker, until Ctrl-C")
    kafka.add_argument("workdir", type=Path)
    kafka.add_argument("--secure", action="store_true", help="add SASL_SSL and SSL listeners")
    args = parser.parse_args()
    tls = make_tls(args.workdir / "tls") if args.secure else None
    broker = KafkaBroker(
        args.workdir,
        tls=tls,
        scram_users={"akisnap": "akisnap-scram"} if tls else {},
        plain_users={"akisnap": "akisnap-plain"} if tls else {},
    )
    with running(broker):
        print(f"PLAINTEXT {broker.bootstrap}")
        if tls is not None:
            print(f"SASL_SSL  {broker.sasl_ssl_bootstrap} (SCRAM-SHA-512 and PLAIN user akisnap)")
            print(f"SSL       {broker.ssl_bootstrap} (client certificate {tls.client_cert})")
            print(f"CA        {tls.ca_cert}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
