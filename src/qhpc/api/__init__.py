"""HTTP (FastAPI) and ZeroMQ in front of the broker: thin, no business logic."""
