"""Settings that must not open what they are meant to close."""

import pytest

from mlserver_mme.config import MMESettings


@pytest.mark.parametrize("token", [
    "CHANGE-ME\nreplace-mlserver-mme-admin-in-an-overlay",  # the Kubernetes base's placeholder
    "CHANGE-ME",  # a placeholder someone could send
    "0123456789abcdef\n",  # a token file's final line break: no client can send it
    "two words",
    "",  # an empty value (a failed command in an overlay's env file) closes, never opens
])
def test_a_placeholder_or_unsendable_admin_token_keeps_the_routes_closed(token):
    configured = MMESettings(admin_token=token).admin_token
    assert configured and configured != token.strip() and len(configured) == 64


def test_a_real_admin_token_is_kept_and_none_stays_none():
    assert MMESettings(admin_token="0123456789abcdef").admin_token == "0123456789abcdef"
    assert MMESettings().admin_token is None
