"""`train` and `evaluate` on one's own recorded log: a catalogue and events in the product's
JSON-lines formats."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from models import sasrec
from models.data import EventLog, load_files, write_log
from models.interest import InterestModel
from models.peers import EASE, EASE_GRID, SASREC_GRID
from models.records import CatalogueItem, Event
from models.train_config import TrainConfig


def write_jsonl(path: Path, rows: list) -> Path:
    """One JSON value a line; a str row is written as it is (a line that is not JSON, or a blank one)."""
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(autouse=True)
def torch_threads():
    """`evaluate` and `quality` set torch's (process-wide) thread count: the next tests get it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``interest-stream *argv`` in this process: (exit status, stdout, stderr)."""
    try:
        main(list(argv))
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_train_then_evaluate_on_a_recorded_log(
    sample_catalogue, sample_events, tiny_encoder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("INTEREST_ENCODER_PATH", str(tiny_encoder))
    catalogue = write_jsonl(tmp_path / "catalogue.jsonl", sample_catalogue)
    # an item the catalogue lacks: skipped
    gone = {**sample_events[5], "event_id": "gone", "item_id": "no-such-item"}
    # out of order: sorted by time
    events = write_jsonl(tmp_path / "events.jsonl", [gone, *reversed(sample_events)])
    files = [
        "--catalogue",
        str(catalogue),
        "--events",
        str(events),
        "--cache",
        str(tmp_path / "cache"),
    ]
    checkpoint = tmp_path / "model.pt"

    status, out, err = run(
        capsys,
        "train",
        *files,
        "--out",
        str(checkpoint),
        "--epochs",
        "2",
        "--dim",
        "8",
        "--hidden",
        "8",
        "--trend-half-life",
        "3600",
    )
    assert status == 0, err
    # evaluated below: replayed in time order
    assert InterestModel.load(checkpoint).config.trend_half_life_s == 3600.0
    assert (
        f"log: {catalogue} + {events}: 96 items, 720 events (1 skipped: item not in the catalogue)"
        in out
    )
    trained = json.loads(checkpoint.with_suffix(".json").read_text())
    data = {
        "source": {"catalogue": str(catalogue), "events": str(events)},
        "items": 96,
        "events": 720,
        "skipped_events": 1,
    }
    # the first 80% by time
    assert checkpoint.exists() and trained["data"] == data and trained["events"] == 576
    # chosen on validation, said
    assert set(trained["calibration"]) == {"trend_weight"} and "trend_weight x" in out
    assert len(list((tmp_path / "cache").glob("items-*.npy"))) == 1

    # not what it was trained with: its inputs would be of another scale
    monkeypatch.setenv("INTEREST_HALF_LIFE_S", "3600")
    status, _, err = run(
        capsys,
        "evaluate",
        *files,
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "eval.json"),
    )
    assert status == 1 and "trained with INTEREST_HALF_LIFE_S=604800.0: set the same" in err, err
    monkeypatch.delenv("INTEREST_HALF_LIFE_S")

    status, out, err = run(
        capsys,
        "evaluate",
        *files,
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "eval.json"),
    )
    assert status == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["data"] == data and (report["train_events"], report["test_events"]) == (576, 144)
    assert (
        report["test_from"] == trained["train_before"]
        and report["versions"]["fused"] == trained["version"]
    )
    assert list(report["results"]) == [
        "fused",
        "long-term only",
        "GRU only",
        "untrained default",
        "popular",
        "item-knn",
        "EASE",
        "SASRec+",
    ]
    for result in report["results"].values():
        parts = [result[part] for part in ("all", "users_with_history", "new_users")]
        metrics = [
            v
            for part in parts
            for k, v in part.items()
            if k not in ("events", "groups") and v is not None
        ]
        assert result["all"]["events"] == 144 and metrics and all(0.0 <= v <= 1.0 for v in metrics)
    assert report["results"]["popular"]["tuning"]["params"]["window_s"] in (
        86400.0,
        7 * 86400.0,
        30 * 86400.0,
        None,
    )
    assert report["results"]["item-knn"]["tuning"]["params"]["recent"] in (5, 20, 100)


def test_a_recorded_log_reads_as_the_stream_and_replay_would(tmp_path):
    catalogue = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"item_id": "a", "text": "old"},
            {"item_id": 7, "text": "seven"},
            "",
            {"item_id": "a", "text": "new"},
        ],
    )
    events = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {
                "event_id": "e1",
                "user_id": 1,
                "item_id": "a",
                "type": "purchase",
                "ts": 20,
                "quantity": 2,
                "price": 9.5,
            },
            # no type: a click, as replay sends it
            {"event_id": "e2", "user_id": "u", "item_id": 7, "ts": 10},
            # b: not in the catalogue
            {"event_id": "e3", "user_id": "u", "item_id": "b", "type": "click", "ts": 5},
            {"event_id": "e4", "user_id": "u", "item_id": "a", "type": "click", "ts": 10},
        ],
    )
    log = load_files(catalogue, events)
    # the last line of an id wins, in the first one's place
    assert log.items == [CatalogueItem("a", "new"), CatalogueItem("7", "seven")]
    # equal times: file order
    assert log.events == [
        Event("e2", "u", "7", "click", 10.0),
        Event("e4", "u", "a", "click", 10.0),
        Event("e1", "1", "a", "purchase", 20.0, 2, 9.5),
    ]
    assert log.skipped == 1 and log.source == {"catalogue": str(catalogue), "events": str(events)}


def test_the_movielens_files_read_back_as_the_same_log(tmp_path):
    """What `interest-stream movielens` writes (write_log) is a recorded log like any other."""
    log = EventLog(
        [
            Event(
                f"e{n}",
                f"u{n % 3}",
                f"i{n % 4}",
                "purchase" if n % 5 == 0 else "click",
                100.0 + n // 2,
            )
            for n in range(20)
        ],
        [CatalogueItem(f"i{n}", f"item {n}") for n in range(4)],
        {"dataset": "made-up"},
    )
    paths = write_log(log, tmp_path)
    back = load_files(paths["catalogue"], paths["events"])
    assert (back.events, back.items, back.skipped) == (log.events, log.items, 0)
    assert back.split(0.2) == log.split(0.2)


EVENT = {"event_id": "e1", "user_id": "u", "item_id": "a", "type": "click", "ts": 1000.0}


def bad_event(**fields) -> list:
    """A good event, then one with ``fields`` changed (None: left out)."""
    return [
        EVENT,
        {k: v for k, v in {**EVENT, "event_id": "e2", **fields}.items() if v is not None},
    ]


@pytest.mark.parametrize(
    "items, events, args, message",
    [
        (
            [{"item_id": "a", "text": "x"}, '{"item_id": "b" "text": "y"}'],
            [EVENT],
            [],
            "{c}:2: not JSON: Expecting ',' delimiter: line 1 column 17 (char 16)",
        ),
        ([["a", "x"]], [EVENT], [], "{c}:1: not a JSON object"),
        ([{"item_id": "a"}], [EVENT], [], "{c}:1: missing field 'text'"),
        ([{"item_id": "a", "text": " "}], [EVENT], [], "{c}:1: text must be a non-empty string"),
        (
            [{"item_id": True, "text": "x"}],
            [EVENT],
            [],
            "{c}:1: item_id must be a non-empty string or an integer, not True",
        ),
        ([], [EVENT], [], "{c}: no items"),
        (
            [{"item_id": "a", "text": "x"}],
            bad_event(user_id=None),
            [],
            "{e}:2: missing field 'user_id'",
        ),
        ([{"item_id": "a", "text": "x"}], bad_event(ts=None), [], "{e}:2: missing field 'ts'"),
        (
            [{"item_id": "a", "text": "x"}],
            bad_event(type="view"),
            [],
            "{e}:2: type must be click or purchase, not 'view'",
        ),
        (
            [{"item_id": "a", "text": "x"}],
            bad_event(ts=math.nan),
            [],
            "{e}:2: ts must be a finite number, not nan",
        ),
        (
            [{"item_id": "a", "text": "x"}],
            bad_event(ts="1000"),
            [],
            "{e}:2: ts must be a finite number, not '1000'",
        ),
        (
            [{"item_id": "a", "text": "x"}],
            bad_event(quantity=0),
            [],
            "{e}:2: quantity must be a positive integer, not 0",
        ),
        (
            [{"item_id": "a", "text": "x"}],
            bad_event(price=math.inf),
            [],
            "{e}:2: price must be a finite number, not inf",
        ),
        (
            [{"item_id": "b", "text": "x"}],
            [EVENT, EVENT],
            [],
            "{e}: none of its 2 events has an item of {c}",
        ),
        ([{"item_id": "a", "text": "x"}], [], [], "{e}: no events"),
        # one time: nothing before the cutoff
        (
            [{"item_id": "a", "text": "x"}],
            [EVENT, {**EVENT, "event_id": "e2"}],
            [],
            "too few events to split by time ({c} + {e}: 1 items, 2 events): none is before the "
            "last 20% of the log",
        ),
        (
            [{"item_id": "a", "text": "x"}],
            [EVENT, {**EVENT, "ts": 2000.0}],
            ["--test-fraction", "1"],
            "the test fraction must lie between 0 and 1, not 1.0",
        ),
        (
            [{"item_id": "a", "text": "x"}],
            [EVENT],
            ["--dataset", "movielens-100k"],
            "give --catalogue and --events together, or --dataset, not both",
        ),
    ],
)
def test_a_bad_log_is_one_line_naming_the_file_and_line(
    items, events, args, message, tmp_path, capsys
):
    c, e = write_jsonl(tmp_path / "c.jsonl", items), write_jsonl(tmp_path / "e.jsonl", events)
    status, _, err = run(capsys, "evaluate", "--catalogue", str(c), "--events", str(e), *args)
    assert (status, err) == (1, f"interest-stream evaluate: {message.format(c=c, e=e)}\n")


def test_the_log_is_a_dataset_or_both_files(tmp_path, capsys):
    c = write_jsonl(tmp_path / "c.jsonl", [{"item_id": "a", "text": "x"}])
    assert run(capsys, "train", "--catalogue", str(c))[1:] == (
        "",
        "interest-stream train: give --catalogue and --events together, or --dataset, not both\n",
    )
    missing = tmp_path / "none.jsonl"
    assert (
        run(capsys, "train", "--catalogue", str(c), "--events", str(missing))[2]
        == f"interest-stream train: {missing}: no such file\n"
    )


@pytest.mark.parametrize("command", ["train", "quality"])
def test_zero_epochs_is_refused_by_the_flag_and_by_the_config(command, capsys):
    status, _, err = run(capsys, command, "--dataset", "grocery", "--epochs", "0")
    assert status == 2 and "--epochs: 0: must be at least 1" in err
    with pytest.raises(ValueError, match="at least one epoch"):
        TrainConfig(epochs=0)


def test_training_needs_events_before_its_validation_part(
    tiny_encoder, tmp_path, monkeypatch, capsys
):
    """Split 2 / 2 by time: the two training events share one time, so none is before the
    validation cutoff."""
    monkeypatch.setenv("INTEREST_ENCODER_PATH", str(tiny_encoder))
    c = write_jsonl(tmp_path / "c.jsonl", [{"item_id": "a", "text": "x"}])
    e = write_jsonl(
        tmp_path / "e.jsonl",
        [{**EVENT, "event_id": f"e{n}", "ts": 1000.0 + (n // 2)} for n in range(4)],
    )
    status, _, err = run(
        capsys,
        "train",
        "--catalogue",
        str(c),
        "--events",
        str(e),
        "--test-fraction",
        "0.5",
        "--cache",
        str(tmp_path),
    )
    assert (status, err.splitlines()[-1]) == (
        1,
        "interest-stream train: too few events to train on: none of the 2 training events is "
        "before the validation part (the last 10% of the training period by time)",
    )


def test_quality_over_two_seeds_on_a_recorded_log(
    sample_catalogue, sample_events, tiny_encoder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("INTEREST_ENCODER_PATH", str(tiny_encoder))
    end = max(e["ts"] for e in sample_events)
    # a user of the test period only
    newcomer = [
        {**sample_events[n], "event_id": f"new-{n}", "user_id": "newcomer", "ts": end + n}
        for n in range(3)
    ]
    files = [
        "--catalogue",
        str(write_jsonl(tmp_path / "c.jsonl", sample_catalogue)),
        "--events",
        str(write_jsonl(tmp_path / "e.jsonl", sample_events + newcomer)),
        "--cache",
        str(tmp_path / "cache"),
    ]
    # what was trained: deterministic peers at seed 0 only, SASRec+ at every seed
    ease_fits, sasrec_seeds = [], []
    ease_fit, sasrec_fit = EASE.fit, sasrec.fit
    monkeypatch.setattr(
        EASE, "fit", lambda self: ease_fits.append(self.reg_weight) or ease_fit(self)
    )
    monkeypatch.setattr(
        sasrec,
        "fit",
        lambda seqs, times, n, config: (
            sasrec_seeds.append(config.seed) or sasrec_fit(seqs, times, n, config)
        ),
    )
    argv = [
        "quality",
        *files,
        "--keep-seen",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "q.json"),
    ]

    status, out, err = run(capsys, *argv)
    assert status == 0, err
    report = json.loads((tmp_path / "q.json").read_text())
    names = [
        "fused",
        "GRU only",
        "popular",
        "item-knn",
        "EASE",
        "SASRec+",
        "own re-buys, then popular",
    ]
    assert [(r["seed"], list(r["results"])) for r in report["runs"]] == [(0, names), (1, names)]
    assert (
        report["command"] == ["interest-stream", *argv]
        and report["config"]["exclude_seen"] is False
    )
    assert [(t["seed"], t["events"]) for t in report["training"]] == [
        (0, report["train_events"]),
        (1, report["train_events"]),
    ]
    assert all(1 <= t["epochs"] <= 2 and t["seconds"] > 0 for t in report["training"])
    assert len(ease_fits) == len(EASE_GRID) + 1  # tuned and replayed at seed 0 only
    # tuned at seed 0, then trained once per seed
    assert sasrec_seeds == [0] * len(SASREC_GRID) + [0, 1]
    first, second = (r["results"] for r in report["runs"])
    assert report["deterministic"] == ["popular", "item-knn", "EASE", "own re-buys, then popular"]
    assert all(second[name] == first[name] for name in report["deterministic"])
    assert report["params"] == {name: first[name]["tuning"]["params"] for name in names[2:]}
    # seed 0's choice
    assert second["SASRec+"]["tuning"] == {
        "params": report["params"]["SASRec+"],
        "validation NDCG@10": None,
    }
    assert second["fused"] != first["fused"]  # another seed, another model

    table = (tmp_path / "q.md").read_text()
    assert (
        table in out
        and "popular, item-knn, EASE, own re-buys, then popular: deterministic" in table
    )
    lines = [line for line in table.splitlines() if line.startswith("| ") and "±" in line]
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    }
    assert list(rows) == names
    for name in names:
        for column, part in ((0, "all"), (-1, "new_users")):  # NDCG@10 overall and of new users
            values = [run["results"][name][part]["NDCG@10"] for run in report["runs"]]
            assert report["summary"][name][part]["NDCG@10"]["mean"] == pytest.approx(
                np.mean(values)
            )
            assert rows[name][column] == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    assert all(cell.endswith("± 0.0000") for name in report["deterministic"] for cell in rows[name])

    status, _, err = run(
        capsys,
        "quality",
        *files,
        "--keep-seen",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "again.json"),
        "--peer-params",
        str(tmp_path / "q.json"),
        "--trend-half-life",
        "3600",
    )
    assert status == 0, err
    assert (
        json.loads((tmp_path / "again.json").read_text())["config"]["trend_half_life_s"] == 3600.0
    )
    one_seed = (tmp_path / "again.md").read_text()
    assert "±" not in one_seed and "One seed (0): no spread measured." in one_seed
    again = json.loads((tmp_path / "again.json").read_text())["runs"][0]["results"]
    assert {name: again[name]["tuning"] for name in names[2:]} == {
        name: {"params": p, "validation NDCG@10": None} for name, p in report["params"].items()
    }


@pytest.mark.parametrize("keep_seen", [False, True])
def test_peer_params_are_taken_only_from_a_report_of_the_same_mode(tmp_path, keep_seen):
    import argparse

    from cli.commands.offline import given_params
    from state.faults import InterestStreamError

    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {"params": {"EASE": {"reg_weight": 50.0}}, "config": {"exclude_seen": not keep_seen}}
        )
    )
    assert given_params(argparse.Namespace(peer_params=str(report), keep_seen=keep_seen)) == {
        "EASE": {"reg_weight": 50.0}
    }
    # tuned for the other mode: not this mode's params
    with pytest.raises(InterestStreamError, match="was tuned"):
        given_params(argparse.Namespace(peer_params=str(report), keep_seen=not keep_seen))
