"""Outbound side: the callback sender, its URL policy and its signatures."""

from __future__ import annotations

import logging

from taskplatform.dispatch.callback import CallbackSender
from taskplatform.dispatch.policy import (
    ALLOW_SETTING,
    DEFAULT_DENY,
    DENY_SETTING,
    CallbackPolicy,
    IPNetwork,
    parse_networks,
)
from taskplatform.dispatch.signing import parse_secret
from taskplatform.settings import Settings

__all__ = ["CallbackSender", "sender_from_settings"]

logger = logging.getLogger(__name__)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.replace(" ", ",").split(",") if item.strip()]


def _covered(network: IPNetwork, deny: tuple[IPNetwork, ...]) -> bool:
    return any(
        network.version == other.version and network.subnet_of(other)  # type: ignore[arg-type]
        for other in deny
    )


def sender_from_settings(settings: Settings) -> CallbackSender:
    """Build the callback sender that ``settings`` describe (not started).

    Raises:
        ValueError: a network in ``TASKPLATFORM_CALLBACK_*_NETWORKS`` or a signing secret is
            malformed; the message names the setting.
    """
    allow = settings.callback_allow_networks
    deny = parse_networks(_items(settings.callback_deny_networks), setting=DENY_SETTING)
    dropped = [network for network in DEFAULT_DENY if not _covered(network, deny)]
    if dropped:
        # Replacing the list to add one network would silently open the metadata services.
        logger.warning(
            "%s leaves out default denied networks, which callbacks may now reach: %s",
            DENY_SETTING,
            ", ".join(str(network) for network in dropped),
        )
    policy = CallbackPolicy(
        deny=deny,
        allow=parse_networks(_items(allow), setting=ALLOW_SETTING) if allow else None,
    )
    secrets = []
    if settings.signing_secret is not None:
        for secret in _items(settings.signing_secret.get_secret_value()):
            try:
                secrets.append(parse_secret(secret))
            except ValueError as exc:
                raise ValueError(f"TASKPLATFORM_SIGNING_SECRET: {exc}") from exc
    return CallbackSender(
        max_connections=settings.callback_max_connections,
        max_response_bytes=settings.callback_response_max_bytes,
        policy=policy,
        signing_secrets=secrets,
    )
