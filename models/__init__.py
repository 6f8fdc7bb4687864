"""The GRU, the item encoder, long-term decay, fusion and top-k scoring, training and evaluation."""
