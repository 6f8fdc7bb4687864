import pytest

from models.evaluate import METRICS
from models.seeds import markdown_table, spread, summarise


def run(value: float, new_users: float | None) -> dict[str, dict]:
    """A made-up result of one recommender: every metric ``value``, new users' ``new_users``."""
    part = dict.fromkeys(METRICS, value)
    return {
        "m": {
            "all": part,
            "users_with_history": part,
            "new_users": dict.fromkeys(METRICS, new_users),
        }
    }


def test_the_spread_over_runs_per_recommender_part_and_metric():
    summary = summarise([run(0.1, 0.5), run(0.2, None), run(0.6, 0.5)])
    assert summary["m"]["all"]["NDCG@10"] == {
        "mean": pytest.approx(0.3),
        "std": pytest.approx(((0.04 + 0.01 + 0.09) / 2) ** 0.5),
        "min": 0.1,
        "max": 0.6,
        "runs": 3,
    }
    assert summary["m"]["new_users"]["AUC"] is None  # one run had no event of new users
    assert summarise([run(0.1, 0.5)])["m"]["all"]["HR@10"]["std"] == 0.0
    assert spread(summary["m"]["all"]["NDCG@10"]) == "0.3000 ± 0.2646"


def test_one_run_shows_no_spread_it_did_not_measure():
    summary = summarise([run(0.1, 0.5)])
    assert spread(summary["m"]["all"]["NDCG@10"]) == "0.1000"
    assert "±" not in markdown_table(summary)


def test_runs_of_different_recommenders_are_refused():
    with pytest.raises(ValueError, match="different recommenders"):
        summarise([run(0.1, 0.5), {"other": run(0.1, 0.5)["m"]}])
    with pytest.raises(ValueError, match="no runs"):
        summarise([])


def test_the_markdown_table_has_a_row_per_recommender_and_a_column_per_part_and_metric():
    summary = summarise([run(0.1, 0.5), run(0.3, 0.5)])
    header, rule, row = markdown_table(summary).splitlines()
    assert header.startswith("| recommender | NDCG@10 | HR@10 |") and header.endswith(
        "| NDCG@10, users with history | NDCG@10, new users |"
    )
    assert rule == "|---" * 10 + "|"
    assert row == "| m | " + " | ".join(["0.2000 ± 0.1414"] * 8 + ["0.5000 ± 0.0000"]) + " |"
