"""The online store and a serving replica over a real Bytewax replay.

After every engine batch the flow publishes to LMDB; a replica reading that store (in this process
through the writer's environment, and in another process) must score exactly as the engine would on
the same state: the same feature vector and the same score, bit for bit.
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
import sys
from array import array
from dataclasses import dataclass

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main

from appliance.config.file import Config, config_from_dict
from appliance.engine.core import Engine
from appliance.engine.items import EventItem, LabelItem
from appliance.engine.online import OnlinePublisher
from appliance.features import attributes
from appliance.features.entity_codec import decode_state, encode_state
from appliance.ingest.events import Event, parse_event
from appliance.serving.replica import DecodedStates, Replica
from appliance.storage.online_store import OnlineReader, OnlineWriter, Publication
from appliance.storage.store import open_db
from dataflows.appliance_flow import build_flow
from tests.conftest import SMALL_CONFIG, make_stream


def replica_config(db: str) -> dict:
    data = copy.deepcopy(SMALL_CONFIG)
    data["features"]["label_rates"] = True  # published state beyond entity states
    data["features"]["ttl"] = {"card": "10m"}  # idle cards are evicted: deletions reach the store too
    data["model"]["publish_every"] = 5  # many publications: the served model changes under the replica
    data["serve"] = {"db": db}
    return data


class CountingWriter(OnlineWriter):
    """The real writer, counting what it was asked to delete (evictions)."""

    deleted = 0

    def write(self, publication: Publication) -> None:
        publication = Publication(publication.meta, list(publication.states), list(publication.deleted),
                                  publication.space, publication.model)
        self.deleted += len(publication.deleted)
        super().write(publication)


def probes(stream: list[dict]) -> list[dict]:
    """Requests for known and unknown entities, at the event times of the stream."""
    events = [e for e in stream if e["type"] == "payment"]
    out = []
    for i, event in enumerate(events[::7]):
        values = {"user": event["user"], "card": event["card"] if i % 5 else "never-seen",
                  "amount": event["amount"], "city": event["city"]}
        out.append((values, event["ts"] + 30.0))
    return out


@dataclass
class InProcess:
    """An engine publishing after its batches, and a replica reading the store in the same process."""

    config: Config
    engine: Engine
    writer: OnlineWriter
    publisher: OnlinePublisher
    replica: Replica


def in_process(tmp_path, writer_class: type[OnlineWriter] = OnlineWriter) -> InProcess:
    config = config_from_dict(replica_config(str(tmp_path / "a.db")))
    engine = Engine(config)
    writer = writer_class(tmp_path / "a.db-online")
    publisher = OnlinePublisher(writer, engine)
    publisher.rebuild()
    return InProcess(config, engine, writer, publisher, Replica(config, OnlineReader(writer.path, env=writer.env)))


def test_a_replica_scores_bit_for_bit_as_the_engine_after_every_batch(tmp_path):
    setup = in_process(tmp_path, CountingWriter)
    engine, writer, publisher, replica = setup.engine, setup.writer, setup.publisher, setup.replica
    stream = make_stream(1500, seed=5)
    requests = probes(stream)
    compared, versions, seen_versions = 0, set(), []

    def after_batch(engine: Engine, force: bool) -> bool:
        nonlocal compared
        publisher.publish()
        for values, ts in requests[compared % len(requests):][:8]:
            got = replica.score(values, ts)
            x = engine.space.compute(values, ts, engine.entities)
            y = engine.model.predict(engine.model.view.model, x)
            assert orjson.dumps(got.x) == orjson.dumps(x)  # same names, same order, same float bits
            assert got.y == y
            assert got.version == engine.model.served.version
            versions.add(got.version)
            seen_versions.append(got.version)
            compared += 1
        assert replica.meta().watermark == (engine.watermark if engine.watermark > -1e300 else None)
        return True

    items = [("file", i, orjson.dumps(raw)) for i, raw in enumerate(stream, start=1)]
    # an operator's rollback mid-stream (a control record, as the inbox carries it): it reaches the replica too
    items.insert(len(items) * 2 // 3, ("inbox", 1, orjson.dumps({"control": "rollback"})))
    run_main(build_flow(TestingSource(items, batch_size=40), TestingSink([]), engine,
                        checkpoint_seconds=3600, after_batch=after_batch))
    assert compared > 200
    assert len(versions) > 3, "the served version never changed under the replica"
    newest = max(engine.model.catalog)  # the rollback left an older version serving than the newest made
    assert seen_versions[-1] == engine.model.served.version < newest, (seen_versions[-5:], newest)
    assert engine.space.label_rates is not None and engine.space.label_rates.n > 0
    assert writer.deleted > 0, "no eviction reached the online store"
    cache = replica.states  # the decoded states it kept: reused, and decoded again when their bytes changed
    assert cache.hits > 0 and cache.decoded > len(cache.entries) > 0
    with replica.reader.view() as view:
        stored = {(key, entity): decode_state(blob) for key, entity, blob in view.states()}
    assert stored == {(key, entity): state for key, entity, state in engine.space.iter_states(engine.entities)}
    writer.close()


REPLICA_SCRIPT = """
import sys, orjson
from appliance.config.file import config_from_dict
from appliance.serving.replica import DecodedStates, Replica
from appliance.storage.online_store import OnlineReader
config, path, requests = orjson.loads(sys.stdin.buffer.read())
replica = Replica(config_from_dict(config), OnlineReader(path))
out = [replica.score(values, ts) for values, ts in requests]
sys.stdout.buffer.write(orjson.dumps([{"x": s.x, "y": s.y, "version": s.version} for s in out],
                                     option=orjson.OPT_NON_STR_KEYS))
"""


def test_a_replica_in_another_process_scores_as_the_engine(tmp_path):
    data = replica_config(str(tmp_path / "a.db"))
    config = config_from_dict(data)
    stream = make_stream(800, seed=9)
    engine = Engine(config)
    writer = OnlineWriter(tmp_path / "a.db-online")
    publisher = OnlinePublisher(writer, engine)
    publisher.rebuild()
    items = [("file", i, orjson.dumps(raw)) for i, raw in enumerate(stream, start=1)]
    run_main(build_flow(TestingSource(items, batch_size=50), TestingSink([]), engine, checkpoint_seconds=3600,
                        after_batch=lambda engine, force: publisher.publish() or True))
    requests = probes(stream)
    done = subprocess.run([sys.executable, "-c", REPLICA_SCRIPT], input=orjson.dumps([data, str(writer.path), requests]),
                          capture_output=True, check=True, timeout=120)
    got = orjson.loads(done.stdout)
    want = []
    for values, ts in requests:
        x = engine.space.compute(values, ts, engine.entities)
        want.append({"x": x, "y": engine.model.predict(engine.model.view.model, x),
                     "version": engine.model.served.version})
    assert orjson.dumps(got) == orjson.dumps(want, option=orjson.OPT_NON_STR_KEYS)  # every float's bits
    assert len(requests) > 50
    writer.close()


def test_the_online_store_is_owner_only_and_rebuilt_at_open(tmp_path):
    config = config_from_dict(replica_config(str(tmp_path / "a.db")))
    path = tmp_path / "a.db-online"
    engine = Engine(config)
    publisher = OnlinePublisher(OnlineWriter(path), engine)
    publisher.rebuild()
    for offset, raw in enumerate(make_stream(100)):
        parsed = parse_event(raw, config.event, "classification")
        engine.process(EventItem("file", offset, parsed, None, True) if isinstance(parsed, Event)
                       else LabelItem("file", offset, parsed))
    publisher.publish()
    with OnlineReader(path, env=publisher.writer.env).view() as view:
        assert len(list(view.states())) == engine.space.entity_count(engine.entities) > 10
    publisher.writer.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(path / name).st_mode) == 0o600 for name in os.listdir(path))
    fresh = Engine(config)  # a restart from an empty checkpoint: the store holds nothing of the last run
    again = OnlinePublisher(OnlineWriter(path), fresh)
    again.rebuild()
    reader = OnlineReader(path, env=again.writer.env)
    with reader.view() as view:
        assert list(view.states()) == []
        assert view.meta().seq == 1
    again.writer.close()


def write_cards(path, scale: float) -> None:
    lines = ["card_number,limit,tier"] + [f"c{i},{scale * (i + 1)},{'gold' if i % 2 else 'blue'}" for i in range(10)]
    path.write_text("\n".join(lines) + "\n")


def test_a_replica_follows_the_attribute_tables_the_engine_switches_to(tmp_path):
    data = replica_config(str(tmp_path / "a.db"))
    data["features"]["attributes"] = [{"name": "card", "key": "card", "column": "card_number", "path": "cards.csv",
                                       "numeric": ["limit"], "categorical": ["tier"]}]
    config = config_from_dict(data, base_dir=tmp_path)
    [spec] = config.features.attributes
    write_cards(tmp_path / "cards.csv", 100.0)
    db = open_db(config.db)
    assert attributes.load_csv(db, spec, tmp_path / "cards.csv", now=1.0) == (1, True)
    engine = Engine(config)
    engine.attach_attributes(db)  # serving version 1
    write_cards(tmp_path / "cards.csv", 7.0)  # version 2 is stored now, served from the refresh mid-stream
    assert attributes.load_csv(db, spec, tmp_path / "cards.csv", now=2.0) == (2, True)
    db.conn.close()
    writer = OnlineWriter(tmp_path / "a.db-online")
    publisher = OnlinePublisher(writer, engine)
    publisher.rebuild()
    replica = Replica(config, OnlineReader(writer.path, env=writer.env))
    stream = make_stream(600, seed=4)
    requests = probes(stream)
    tables_seen = []

    def after_batch(engine: Engine, force: bool) -> bool:
        publisher.publish()
        for values, ts in requests[:12]:
            got = replica.score(values, ts)
            x = engine.space.compute(values, ts, engine.entities)
            assert orjson.dumps(got.x) == orjson.dumps(x)
            assert got.y == engine.model.predict(engine.model.view.model, x)
        tables_seen.append(replica.space.attributes["card"].version)
        return True

    items = [("file", i, orjson.dumps(raw)) for i, raw in enumerate(stream, start=1)]
    items.insert(len(items) // 2, ("inbox", 1, orjson.dumps({"control": "refresh_attributes"})))
    run_main(build_flow(TestingSource(items, batch_size=40), TestingSink([]), engine, checkpoint_seconds=3600,
                        after_batch=after_batch))
    assert tables_seen[0] == 1 and tables_seen[-1] == 2 == engine.space.attributes["card"].version
    assert any("card_limit" in replica.score(values, ts).x for values, ts in requests)
    writer.close()


def test_decoded_states_are_reused_for_the_same_bytes_only_and_bounded():
    one = encode_state((array("d", [1.0, 2.0]), (array("q", [7, 2]),)))
    two = encode_state((array("d", [1.0, 3.0]), (array("q", [7, 2, 8, 3]),)))
    cache = DecodedStates(capacity=2)
    first = cache.state("card", "c1", one)
    assert cache.state("card", "c1", bytes(one)) is first  # equal bytes (a new object, as LMDB returns)
    assert cache.state("card", "c1", two) == decode_state(two)  # changed bytes: decoded again
    assert (cache.hits, cache.decoded) == (1, 2)
    cache.state("user", "c1", one)  # another key, same entity name: its own entry
    cache.state("card", "c2", one)  # a third entry: the one stored longest ago goes
    assert list(cache.entries) == [("user", "c1"), ("card", "c2")]
    none = DecodedStates(capacity=0)
    assert none.state("card", "c1", one) == decode_state(one) and not none.entries


def test_one_request_reads_one_batch_whatever_commits_meanwhile(tmp_path):
    """Inside `Replica.request` the meta a child's checks read and the state its score reads are of
    the batch committed when the request began, though a newer batch commits in between."""
    setup = in_process(tmp_path)
    config, engine, writer, publisher, replica = setup.config, setup.engine, setup.writer, setup.publisher, setup.replica
    stream = make_stream(300, seed=3)
    schema, task = config.event, config.model.task
    events = [parse_event(orjson.dumps(raw), schema, task) for raw in stream]
    first, second = events[:150], events[150:]

    def process(batch):
        for offset, parsed in enumerate(batch):
            engine.process(EventItem("file", offset, parsed, None, True) if isinstance(parsed, Event)
                           else LabelItem("file", offset, parsed))

    process(first)
    publisher.publish()
    probe = next(e for e in second if isinstance(e, Event))
    with replica.request():
        before = replica.meta()
        process(second)
        publisher.publish()  # committed while the request reads
        during = replica.score(probe.values, probe.ts)
    after = replica.score(probe.values, probe.ts)
    assert during.meta == before and after.meta.seq == before.seq + 1
    assert after.meta.watermark > before.watermark
    expected = engine.space.compute(probe.values, probe.ts, engine.entities)
    assert orjson.dumps(after.x) == orjson.dumps(expected) != orjson.dumps(during.x)
    replica.close()
    writer.close()
