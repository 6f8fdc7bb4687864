"""A dead letter always fits the broker and says what it cut."""

import pytest

from models.records import Rejection
from streams.dead_letters import dead_letter, record_size

LIMIT = 1_000_000


def test_a_small_message_is_copied_whole_with_its_reason_and_source():
    letter = dead_letter(
        "clicks:3:42", b"u1", b"{oops", Rejection("bad_json", "expected value"), LIMIT
    )
    assert (letter.key, letter.value) == (b"u1", b"{oops")
    assert dict(letter.headers) == {
        "reason": b"bad_json",
        "detail": b"expected value",
        "source": b"clicks:3:42",
    }


@pytest.mark.parametrize(
    "key_size, value_size", [(2, 999_901), (2, 5_000_000), (900_000, 900_000), (2_000_000, 10)]
)
def test_a_copy_over_the_limit_keeps_the_start_of_key_and_value_and_says_so(key_size, value_size):
    key, value = b"k" * key_size, b"v" * value_size
    letter = dead_letter("clicks:0:7", key, value, Rejection("bad_json", "d" * 10_000), LIMIT)
    headers = dict(letter.headers)
    assert letter.size <= LIMIT
    assert headers["truncated"] == b"true" and headers["source"] == b"clicks:0:7"
    assert (headers["original-key-bytes"], headers["original-value-bytes"]) == (
        str(key_size).encode(),
        str(value_size).encode(),
    )
    assert key.startswith(letter.key) and value.startswith(letter.value)
    assert letter.size > LIMIT - 1000  # as much of the original as fits
    # a large key never crowds the value out
    assert len(letter.value) >= min(value_size, (LIMIT - 2000) // 2)
    assert len(headers["detail"]) == 500


def test_null_stays_null_and_the_detail_survives_lone_surrogates():
    letter = dead_letter("items:0:1", b"run-5", None, Rejection("bad_key", "id \ud800"), LIMIT)
    assert letter.value is None and dict(letter.headers)["detail"] == b"id \\ud800"
    assert record_size(None, None, []) == record_size(b"", b"", [])


def test_a_message_with_neither_key_nor_value_has_a_dead_letter_a_producer_can_send():
    """aiokafka refuses a record without key and value (an assertion: the worker stopped with exit 70). Such
    a message reaches the worker as a null on an event topic without a key, or as the stand-in of a record
    batch it could not decode."""
    letter = dead_letter(
        "clicks:0:7", None, None, Rejection("undecodable_batch", "lz4 missing"), LIMIT
    )
    assert (
        letter.key is None and letter.value == b"" and dict(letter.headers)["null-value"] == b"true"
    )
