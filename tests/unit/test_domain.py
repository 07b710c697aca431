"""Validation rules of the auth domain."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidArgument
from components.auth import domain


@pytest.mark.parametrize("name", ["abc", "a" * 32, "user_1", "ABC_def"])
def test_valid_usernames_are_lower_cased(name):
    assert domain.validate_username(name) == name.lower()


@pytest.mark.parametrize("name", ["ab", "a" * 33, "has space", "dash-no", "dot.no", "émile", "", None, 5, ["abc"]])
def test_bad_usernames_are_invalid_arguments(name):
    with pytest.raises(InvalidArgument):
        domain.validate_username(name)


@given(st.text(max_size=200))
def test_password_length_rule(pw):
    if 8 <= len(pw) <= 128 and "\x00" not in pw:
        assert domain.validate_password(pw) == pw
    else:
        with pytest.raises(InvalidArgument):
            domain.validate_password(pw)


def test_profile_changes_need_at_least_one_field_and_clean_values():
    with pytest.raises(InvalidArgument):
        domain.validate_profile_changes({})
    with pytest.raises(InvalidArgument):
        domain.validate_profile_changes({"display_name": "   "})
    with pytest.raises(InvalidArgument):
        domain.validate_profile_changes({"display_name": "a\nb"})
    with pytest.raises(InvalidArgument):
        domain.validate_profile_changes({"bio": "x" * 513})
    assert domain.validate_profile_changes({"bio": None}) == {"bio": ""}
    assert domain.validate_profile_changes({"display_name": "  Ann  ", "avatar_media_id": None}) == {
        "display_name": "Ann",
        "avatar_media_id": None,
    }


def test_limits_default_cap_and_reject_nonsense():
    assert domain.validate_limit(None, 20, 100) == 20
    assert domain.validate_limit(10**9, 20, 100) == 100
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(InvalidArgument):
            domain.validate_limit(bad, 20, 100)


def test_user_ids_are_checked_deduplicated_and_bounded():
    uid = "0" * 32
    assert domain.validate_user_ids([uid, uid]) == [uid]
    with pytest.raises(InvalidArgument):
        domain.validate_user_ids(uid)
    with pytest.raises(InvalidArgument):
        domain.validate_user_ids(["nope"])
    with pytest.raises(InvalidArgument):
        domain.validate_user_ids([f"{i:032x}" for i in range(101)])


def test_refresh_tokens_are_random_and_stored_only_hashed():
    a, b = domain.new_refresh_token(), domain.new_refresh_token()
    assert a != b and len(a) >= 40
    assert domain.hash_refresh_token(a) != a and len(domain.hash_refresh_token(a)) == 64
