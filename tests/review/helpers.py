"""Browser-like steps over HTTP: sign in, read CSRF tokens from forms."""

from __future__ import annotations

import re

import httpx

from tests.review.seed import PASSWORD


def field(html: str, name: str) -> str:
    """The value of the hidden input ``name`` in a page."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field on the page"
    return found.group(1)


def sign_in(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    page = client.get("/audit/login")
    assert page.status_code == 200
    return client.post(
        "/audit/login",
        data={
            "login_token": field(page.text, "login_token"),
            "username": username,
            "password": password,
            "next": "",
        },
    )


def csrf(client: httpx.Client, path: str = "/audit/") -> str:
    """The session's CSRF token, read from a page that has the sign-out form."""
    response = client.get(path, follow_redirects=True)
    return field(response.text, "csrf")
