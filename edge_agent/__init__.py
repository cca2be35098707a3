"""The edge agent: a field terminal's side of the one network.

Readings go into a durable outbox before anything is sent, leave it only when the gateway says it
has them durably, and travel in compressed batches sized to the link, by priority, within the
link's byte budget. See ``model`` for the shared terms.
"""
