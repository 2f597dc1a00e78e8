"""Tokens, roles and permission checks (credential proxy: later issues)."""

from qhpc.security.tokens import (
    TOKEN_PREFIX,
    AuthError,
    PermissionDenied,
    Principal,
    Role,
    TokenExpired,
    TokenRevoked,
    hash_token,
    new_token,
    same_hash,
)

__all__ = [
    "TOKEN_PREFIX",
    "AuthError",
    "PermissionDenied",
    "Principal",
    "Role",
    "TokenExpired",
    "TokenRevoked",
    "hash_token",
    "new_token",
    "same_hash",
]
