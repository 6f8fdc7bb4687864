"""The `interest-stream` command: worker, client tools (produce, replay, catalogue, subscribe),
demo, train, evaluate."""
