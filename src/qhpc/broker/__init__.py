"""The broker: admission, scheduling policies, executors, sessions, reservations, accounting."""
