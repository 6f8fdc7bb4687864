"""The recommender, pure: records, the GRU and fusion model, the item encoder, the micro-batch
updater, training, evaluation."""
