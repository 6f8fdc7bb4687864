"""The parts of an encoder rollout that keep spaces apart: an encoder's space is its weights, vectors carry
it, a worker takes only its own encoder's vectors and empties its item store when its source changes, and
`reembed` knows which items a topic already holds in its space. End to end:
tests/test_refresh_end_to_end.py."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from cli.reembed import held
from models.encoder import ItemEncoder
from models.tiny_bert import build_tiny_bert
from state.item_store import ItemStore, ItemVector, text_hash
from streams.catalogue_agents import read_vectors
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import ENCODER_HEADER


@dataclass
class Record:
    """An item-vectors record as a consumer returns it (aiokafka's and kafka-python's have these)."""

    key: bytes
    value: bytes | None
    headers: tuple = ()
    partition: int = 0
    offset: int = 0


def vector_record(item_id: str, text: str, encoder: str | None, offset: int = 0) -> Record:
    value = ItemVector(item_id, text_hash(text), np.full(4, 0.5, np.float32)).encode()
    return Record(
        item_id.encode(),
        value,
        () if encoder is None else ((ENCODER_HEADER, encoder.encode()),),
        offset=offset,
    )


@pytest.fixture(scope="module")
def encoder_b(tmp_path_factory, sample_catalogue):
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert-b"), [i["text"] for i in sample_catalogue], seed=1
    )


def test_an_encoders_space_is_its_weights(tiny_encoder, encoder_b, tmp_path):
    a, b = ItemEncoder(str(tiny_encoder), "cpu"), ItemEncoder(str(encoder_b), "cpu")
    assert a.space != b.space and a.dim == b.dim
    assert ItemEncoder(str(tiny_encoder), "cpu").space == a.space  # the same on every load
    renamed = tmp_path / tiny_encoder.name  # the same weights under another folder of the same name
    renamed.mkdir()
    for f in encoder_b.iterdir():
        (renamed / f.name).write_bytes(f.read_bytes())
    assert (
        ItemEncoder(str(renamed), "cpu").space
        == b.space.replace(encoder_b.name, tiny_encoder.name)
        != a.space
    )


def test_a_worker_takes_its_own_encoders_vectors_and_those_from_before_encoder_headers():
    records = [
        vector_record("mine", "t", "enc-a", 0),
        vector_record("theirs", "t", "enc-b", 1),
        vector_record("old", "t", None, 2),
        Record(b"gone", None, ((ENCODER_HEADER, b"enc-b"),), offset=3),
    ]
    read = read_vectors(records, 4, "enc-a")
    assert [v.item_id for v in read.vectors] == ["mine", "old"] and read.foreign == 1
    assert read.retired == ["gone"] and read.offsets == {0: 4}  # a retirement is every encoder's


def test_the_item_store_is_emptied_when_the_worker_reads_another_topic_or_encoder(
    tiny_encoder, tmp_path
):
    settings = Settings(
        data_dir=tmp_path, encoder_path=str(tiny_encoder), encoder_device="cpu", torch_threads=0
    )

    def load(s: Settings) -> Runtime:
        runtime = Runtime(s, {})
        runtime.load()
        return runtime

    runtime = load(settings)
    vector = ItemVector("i1", text_hash("t"), np.full(runtime.encoder.dim, 0.1, np.float32))
    runtime.store.apply([vector], [], {0: 7})
    runtime.close()  # the store too: RocksDB refuses a second opening of a directory still open
    again = load(settings)  # the same source: kept
    assert len(again.updater.catalogue) == 1 and again.store.offsets() == {0: 7}
    assert again.updater.catalogue.space == again.encoder.space
    again.close()
    # another source: read again from its start
    moved = load(replace(settings, item_vectors_topic="item-vectors-b"))
    assert (
        len(moved.updater.catalogue) == 0
        and moved.store.offsets() == {}
        and list(moved.store) == []
    )
    moved.close()
    store = ItemStore(tmp_path / "items")
    assert store.source() == f"item-vectors-b {moved.encoder.space}"
    store.close()


def test_reembed_knows_the_latest_vector_each_item_has_in_its_space():
    records = [
        vector_record("a", "old text", "enc-b", 0),
        vector_record("a", "new text", "enc-b", 1),
        # b's latest is A's: embed again
        vector_record("b", "t", "enc-b", 2),
        vector_record("b", "t", "enc-a", 3),
        vector_record("c", "t", None, 4),
        vector_record("d", "t", "enc-b", 5),
        Record(b"d", None, offset=6),
    ]
    assert held(records, "enc-b") == {"a": text_hash("new text")}


def test_a_worker_serving_a_checkpoint_trained_under_other_stream_settings_names_them(
    tiny_encoder, tmp_path, caplog
):
    """Its long-term averages and re-buy weights would be of another scale than it learned: the worker says
    which settings to set (it still serves: a deliberate change is the operator's to make)."""
    import logging

    from models.interest import InterestModel, ModelConfig

    checkpoint = tmp_path / "m.pt"
    InterestModel(
        ModelConfig(
            32,
            8,
            8,
            tiny_encoder.name,
            half_life_s=7776000.0,
            click_weight=1.0,
            purchase_weight=3.0,
        )
    ).save(checkpoint)
    for half_life_s, warned in ((604800.0, True), (7776000.0, False)):
        caplog.clear()
        runtime = Runtime(
            Settings(
                data_dir=tmp_path / "state",
                encoder_path=str(tiny_encoder),
                encoder_device="cpu",
                torch_threads=0,
                checkpoint=str(checkpoint),
                half_life_s=half_life_s,
            ),
            {},
        )
        with caplog.at_level(logging.WARNING, logger="streams.runtime"):
            runtime.load()
        runtime.close()
        assert ("was trained with INTEREST_HALF_LIFE_S=7776000.0" in caplog.text) == warned, (
            caplog.text
        )
