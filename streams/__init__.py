"""The stream worker: faust app, agents, delivery and checkpointing, and their pure steps (parse,
apply, decay)."""
