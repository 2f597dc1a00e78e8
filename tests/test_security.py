from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qhpc.security import AuthError, PermissionDenied, Principal, Role, hash_token, new_token


def test_tokens_are_unique_and_hashed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert token.startswith("qhpc_")
    digest = hash_token(token)
    assert len(digest) == 64
    assert token not in digest
    assert hash_token(token) == digest


@given(st.text(max_size=50))
def test_malformed_tokens_are_auth_errors(text: str) -> None:
    if text.startswith("qhpc_"):
        assert len(hash_token(text)) == 64
    else:
        with pytest.raises(AuthError, match="malformed token"):
            hash_token(text)


def test_roles_and_ownership() -> None:
    admin = Principal("t1", Role.ADMIN, "admin")
    alice = Principal("t2", Role.USER, "alice", account="chem", centre="surf")
    centre = Principal("t3", Role.CENTRE, "surf", centre="surf")
    other_centre = Principal("t4", Role.CENTRE, "julich", centre="julich")
    assert admin.may_act_for("bob", None)
    assert alice.may_act_for("alice", "surf")
    assert not alice.may_act_for("bob", "surf")
    assert centre.may_act_for("bob", "surf")
    assert not other_centre.may_act_for("bob", "surf")
    assert not centre.may_act_for("bob", None)
    local_alice = Principal("t5", Role.USER, "alice")
    assert local_alice.may_act_for("alice", None)
    assert not local_alice.may_act_for("alice", "surf")  # the centre's alice is someone else
    with pytest.raises(PermissionDenied, match="belongs to another user"):
        alice.check_owner("bob", "surf", "job 7")
    with pytest.raises(PermissionDenied, match="role admin; yours is user"):
        alice.require(Role.ADMIN)
    admin.require(Role.ADMIN)
