"""Apache Kafka's own broker, single node in KRaft mode, in a child process: the broker the product is
deployed on, for the tests, the benchmark and `interest-stream dev/demo --broker apache-kafka`.

It runs from the jars `make install` resolves with Maven (``deploy/kafka/pom.xml`` -> ``.kafka/libs``)
on the machine's Java (17 or later): no Docker, nothing downloaded at run time. The first start formats
the storage (``kafka.tools.StorageTool format``); a restart on the same data directory keeps the log,
its cluster id and both ports. Ready means a metadata request lists the broker; stop is Kafka's
controlled shutdown (SIGTERM). The broker's own log is ``data_dir/broker.log``.
"""

from __future__ import annotations

import base64
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from cli.local_broker import BrokerProcess, free_port, wait_for_port
from state.faults import InterestStreamError

ROOT = Path(__file__).resolve().parents[1]
POM = ROOT / "deploy" / "kafka" / "pom.xml"
LIBS = ROOT / ".kafka" / "libs"
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17 (KIP-1013)

# A single node for tests and `dev`: internal topics with one replica, groups formed at once, and a log
# cleaner that looks for work every 0.5 s instead of 15 s, so that a test can see compaction (a topic
# compacts its closed segments only: such a test also sets the topic's segment.ms). Other settings are
# Kafka's defaults. Topics are never created by a client's request: the product creates every topic it
# uses (streams.topics, faust's own), as it must on a cluster that disables auto-creation.
BROKER_CONFIG = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "8",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    "log.cleaner.backoff.ms": "500",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
}
# Kafka's own start script's G1 settings (kafka-run-class.sh), a smaller heap: one node, test-sized data.
JVM_OPTIONS = [
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]
LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""


# Kafka's command-line clients: warnings only, on stderr, so that stdout is the tool's own output.
LOG4J_TOOLS = """\
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
"""


def java_version(java: str) -> int | None:
    """The feature version of ``java`` (17 for "17.0.15"), None if it does not say."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def unavailable(libs: Path = LIBS) -> str | None:
    """Why Apache Kafka cannot run here (one line), or None if it can."""
    java = shutil.which("java")
    if java is None:
        return "no java on PATH (Apache Kafka needs Java 17+)"
    version = java_version(java)
    if version is None or version < MIN_JAVA:
        return f"{java} is Java {version or '?'}; Apache Kafka needs Java {MIN_JAVA}+"
    if not any(libs.glob("kafka_2.13-*.jar")):
        return f"no Apache Kafka jars in {libs} (`make install` resolves them with Maven)"
    return None


def kafka_version(libs: Path = LIBS) -> str:
    """The version of the broker jar in ``libs`` ("4.1.1")."""
    jars = sorted(libs.glob("kafka_2.13-*.jar"))
    if not jars:
        raise InterestStreamError(unavailable(libs) or f"no Apache Kafka jars in {libs}")
    return jars[0].stem.removeprefix("kafka_2.13-")


def _read_properties(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


class ApacheKafka(BrokerProcess):
    """One Apache Kafka node (broker and KRaft controller) on 127.0.0.1: clients at ``port`` (a free one
    if None), the controller at a second free port. ``config``: broker settings over ``BROKER_CONFIG``
    (``{"log.roll.ms": "1000"}``); on a restart the data directory's settings are kept, these applied
    again. ``libs``: the jars (``LIBS``)."""

    name = "apache-kafka"
    # controlled shutdown: the log is closed cleanly, no recovery at the next start
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        config: dict[str, str] | None = None,
        libs: Path = LIBS,
    ) -> None:
        properties = data_dir / "server.properties"
        kept = _read_properties(properties) if properties.exists() else {}
        if port is None and "listeners" in kept:  # a restart: the clients' port stays
            port = int(kept["listeners"].split(",")[0].rsplit(":", 1)[1])
        super().__init__(data_dir, port)
        voters = kept.get("controller.quorum.voters", "")
        self.controller_port = int(voters.rsplit(":", 1)[1]) if voters else free_port()
        self.config = config or {}
        self.libs = libs

    @property
    def properties(self) -> Path:
        return self.data_dir / "server.properties"

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def settings(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.address},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.address}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            **BROKER_CONFIG,
            **self.config,
        }

    def _java(
        self, main: str, *args: str, jvm: list[str] = JVM_OPTIONS, log4j: str = "log4j2.properties"
    ) -> list[str]:
        if reason := unavailable(self.libs):
            raise InterestStreamError(f"Apache Kafka cannot run here: {reason}")
        return [
            "java",
            *jvm,
            f"-Dlog4j2.configurationFile={self.data_dir / log4j}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def prepare(self) -> None:
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in self.settings().items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J)
        if (self.data_dir / "log" / "meta.properties").exists():
            return
        cluster_id = "-"
        # as Kafka's Uuid.randomUuid: a leading "-" reads as an option (1 in 64)
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.properties),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
        if done.returncode != 0:
            raise InterestStreamError(
                f"formatting Apache Kafka's storage failed ({done.returncode}):\n{self.log_tail()}"
            )

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.properties))

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until a metadata request lists this broker: its port opens once it has caught up with its own
        controller's metadata, the answer says that it serves requests."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive:
                raise InterestStreamError(f"Apache Kafka exited while starting:\n{self.log_tail()}")
            try:
                wait_for_port(self.port, timeout_s=1.0)
                admin = KafkaAdminClient(bootstrap_servers=[self.address], request_timeout_ms=5000)
                try:
                    if admin.describe_cluster().get("brokers"):
                        return
                finally:
                    admin.close()
            except (InterestStreamError, KafkaError, OSError):
                pass
            if time.monotonic() > deadline:
                raise InterestStreamError(
                    f"Apache Kafka not ready at {self.address} after {timeout_s:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def tool(
        self, main: str, *args: str, timeout_s: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run one of Kafka's command-line clients (a main class of the kafka-tools jar, e.g.
        ``org.apache.kafka.tools.ConsoleProducer``) against this broker's jars; its output is returned."""
        # Small and quick to start: a client's JVM, not the broker's (the C1 compiler alone starts faster).
        (self.data_dir / "log4j2-tools.properties").write_text(LOG4J_TOOLS)
        command = self._java(
            main,
            *args,
            jvm=["-Xmx256m", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"],
            log4j="log4j2-tools.properties",
        )
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, input=input
        )
