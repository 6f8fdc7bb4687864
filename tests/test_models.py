import numpy as np
import pytest
import torch

from models import longterm
from models.encoder import ItemEncoder, agreement
from models.interest import InterestModel, ModelConfig
from models.topk import top_k
from state.faults import InterestStreamError
from tests.model_helpers import random_model


def test_decay_halves_weight_per_half_life_and_keeps_the_average():
    s, w, t = longterm.add(
        np.zeros((1, 2), np.float32),
        np.zeros(1),
        np.zeros(1),
        np.array([100.0]),
        np.array([[1.0, 0.0]], np.float32),
        np.array([1.0]),
        half_life_s=10.0,
    )
    s2, w2, t2 = longterm.decay_to(s, w, t, np.array([120.0]), 10.0)
    assert w2[0] == pytest.approx(0.25) and t2[0] == 120.0
    assert np.allclose(s2 / w2[:, None], s / w[:, None])  # decay alone does not move the average
    # a late event (time before lt_time) decays nothing and does not move time backwards
    s3, w3, t3 = longterm.decay_to(s2, w2, t2, np.array([110.0]), 10.0)
    assert w3[0] == pytest.approx(0.25) and t3[0] == 120.0


def test_recent_heavier_items_dominate_the_long_term_average():
    half_life = 10.0
    s, w, t = np.zeros((1, 2), np.float32), np.zeros(1), np.zeros(1)
    s, w, t = longterm.add(
        s, w, t, np.array([0.0]), np.array([[1.0, 0.0]], np.float32), np.array([1.0]), half_life
    )
    s, w, t = longterm.add(
        s, w, t, np.array([10.0]), np.array([[0.0, 1.0]], np.float32), np.array([3.0]), half_life
    )
    avg = s[0] / w[0]
    assert avg == pytest.approx([0.5 / 3.5, 3.0 / 3.5])


def test_batched_gru_step_equals_one_user_at_a_time():
    model = InterestModel(ModelConfig(embed_dim=6, dim=4, hidden=5, encoder="t")).eval()
    h = torch.randn(3, 5)
    e = torch.randn(3, 4)  # item vectors in the interest space
    types = torch.tensor([0, 1, 0])
    with torch.no_grad():
        batched = model.step(h, e, types)
        single = torch.cat(
            [model.step(h[i : i + 1], e[i : i + 1], types[i : i + 1]) for i in range(3)]
        )
        assert torch.allclose(batched, single, atol=1e-6)
        # event type matters
        assert not torch.allclose(model.step(h, e, torch.tensor([1, 1, 1])), batched)


def test_fusion_without_history_uses_only_short_term():
    model = InterestModel.untrained(embed_dim=4, hidden=3, encoder="t")
    h = torch.randn(2, 3)
    with torch.no_grad():
        q = model.query(h, torch.zeros(2, 4), torch.zeros(2))
        assert torch.allclose(q, model.log_a_short.exp() * model.out(h))
        lt = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
        strong = model.query(h, lt, torch.tensor([100.0, 100.0]))
        weak = model.query(h, lt, torch.tensor([0.01, 0.01]))
        # long-term evidence pulls the query towards the long-term vector (identity item tower)
        assert strong[0, 0] - q[0, 0] > weak[0, 0] - q[0, 0] > 0


def test_top_k_ranks_by_dot_product_and_excludes():
    items = torch.eye(4)
    q = torch.tensor([[0.1, 0.9, 0.5, 0.0], [1.0, 0.0, 0.0, 0.2]])
    scores, idx = top_k(q, items, 2, exclude=[[1], []])
    assert idx.tolist() == [[2, 0], [0, 3]]
    assert scores[0].tolist() == pytest.approx([0.5, 0.1])
    _, idx_all = top_k(q, items, 10)  # k larger than the catalogue is clipped
    assert idx_all.shape == (2, 4)


def test_checkpoint_round_trip_is_versioned_and_keeps_the_learned_items(tmp_path):
    model = random_model(embed_dim=6, dim=4, hidden=5, known=["b", "a"], rebuys=True)
    version = model.save(tmp_path / "m.pt")
    loaded = InterestModel.load(tmp_path / "m.pt")
    assert loaded.version == version and version.startswith("gru-")
    assert (loaded.config.known_items, loaded.config.rebuys, loaded.item_ids) == (
        2,
        True,
        ["b", "a"],
    )
    assert loaded.rows(["a", "b", "new"]).tolist() == [2, 1, 0]  # each learned row still its item's
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_a_rebuy_checkpoint_from_before_the_count_term_scores_as_it_did(tmp_path):
    model = random_model(embed_dim=6, dim=4, hidden=5, rebuys=True)
    model.save(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["state"]["d_rebuy"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = InterestModel.load(tmp_path / "old.pt")
    weight, count = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0.0, 1.0, 4.0])
    with torch.no_grad():
        assert torch.allclose(
            loaded.rebuy(weight, count),
            model.log_a_rebuy.exp() * torch.log1p(weight) + model.c_rebuy * (weight > 0),
        )


def test_a_checkpoint_of_the_layout_before_item_biases_asks_to_train_again(tmp_path):
    model = InterestModel(ModelConfig(embed_dim=6, dim=4, hidden=5, encoder="t"))
    model.save(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    # as written before: no item biases, learned rows or re-buy term, no item ids
    new_keys = ("text_bias.", "item_id.", "log_a_rebuy", "c_rebuy")
    ckpt["state"] = {k: v for k, v in ckpt["state"].items() if not k.startswith(new_keys)}
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in ("known_items", "rebuys")}
    del ckpt["item_ids"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(InterestStreamError, match="train again"):
        InterestModel.load(tmp_path / "old.pt")


def test_encoder_mean_pools_normalises_and_is_independent_of_batching(tiny_encoder):
    texts = [
        "Alder yoga mat (yoga)",
        "Northpeak espresso machine (coffee)",
        "tent",
        "Alder camera bag (photography) extra words",
    ]
    enc = ItemEncoder(str(tiny_encoder), device="cpu", batch_size=2)
    out = enc.encode(texts)
    assert out.shape == (4, 32) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack(
        [ItemEncoder(str(tiny_encoder), device="cpu", batch_size=1).encode([t])[0] for t in texts]
    )
    # padding changes bf16 rounding slightly
    tol = 2e-2 if enc.model.dtype == torch.bfloat16 else 1e-5
    assert np.allclose(out, one_by_one, atol=tol)
    assert not np.allclose(out[0], out[1], atol=1e-3)  # different texts, different vectors


def test_embedding_agreement_tells_equal_from_perturbed_embeddings():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 16)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    assert agreement(a, a) == {
        "cosine_min": pytest.approx(1.0),
        "cosine_mean": pytest.approx(1.0),
        "neighbours@10_overlap": 1.0,
    }
    b = a + 0.5 * rng.standard_normal(a.shape).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    worse = agreement(a, b)
    assert worse["cosine_min"] < 0.9 and worse["neighbours@10_overlap"] < 0.7


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the GPU path is checked where one is lent",
)
def test_encoder_on_cuda_embeds_as_the_cpu_does(tiny_encoder, sample_catalogue):
    texts = [i["text"] for i in sample_catalogue]
    gpu = ItemEncoder(str(tiny_encoder), batch_size=16)  # "auto" picks the GPU
    assert gpu.device.type == "cuda" and gpu.model.dtype == torch.bfloat16
    on_gpu = gpu.encode(texts)
    on_cpu = ItemEncoder(str(tiny_encoder), device="cpu", batch_size=16).encode(texts)
    assert np.allclose(np.linalg.norm(on_gpu, axis=1), 1.0, atol=1e-5)
    same = agreement(on_gpu, on_cpu)
    assert same["cosine_min"] > 0.99 and same["neighbours@10_overlap"] > 0.9, same


def test_top_k_with_bf16_candidates_matches_exact_scoring():
    torch.manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(3000, 64), dim=-1)
    q = items[:50] * 2 + 0.1 * torch.randn(50, 64)
    exclude = [[b, b + 1] for b in range(50)]  # each query's own item among them
    exact_scores, exact_idx = top_k(q, items, 10, exclude)
    scores, idx = top_k(q, items, 10, exclude, coarse_items=items.to(torch.bfloat16))
    assert torch.equal(idx, exact_idx)
    assert torch.allclose(scores, exact_scores, atol=1e-5)
    tiny = torch.eye(4)  # fewer items than candidates: excluded ones stay last, at -inf
    scores, idx = top_k(
        torch.tensor([[0.1, 0.9, 0.5, 0.0]]), tiny, 10, [[1]], coarse_items=tiny.to(torch.bfloat16)
    )
    assert idx.tolist() == [[2, 0, 3, 1]] and scores[0, -1] == float("-inf")


def test_retiring_items_keeps_the_catalogue_dense_and_every_other_vector_in_place():
    from models.catalogue import Catalogue
    from state.item_store import ItemVector

    catalogue = Catalogue(2)
    catalogue.upsert(
        [ItemVector(f"i{n}", b"\0" * 16, np.array([n, -n], np.float32)) for n in range(5)]
    )
    version = catalogue.version
    catalogue.remove(["i1", "no-such-item", "i4"])
    assert catalogue.version == version + 1 and len(catalogue) == 3 and "i1" not in catalogue.index
    for item_id in ("i0", "i2", "i3"):
        n = int(item_id[1:])
        assert catalogue.vectors([item_id]).tolist() == [[n, -n]]
    catalogue.remove(["no-such-item"])
    assert catalogue.version == version + 1  # nothing changed
