"""Lambda handler for `GET /certificates`: the PEM bundle for a registry's rootcertbundle."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from regauth.errors import RegauthError
from regauth.http import render_error, render_pem
from regauth.runtime import Runtime, get_runtime


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, get_runtime())


def handle(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """Return the root certificate that every token's x5c chain leads to."""
    try:
        pem = runtime.signing.root_certificate_pem()
    except RegauthError as exc:
        return render_error(exc, method="GET", realm=runtime.settings.realm)
    return render_pem(pem)
