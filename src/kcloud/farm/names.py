"""Served names: whose a name is, decided by the name itself.

A served name must resolve to one deployment for everyone, and no tenant may take a name that
the operator or another tenant serves, nor learn by trying whether another tenant has one. So
the name space is split by construction rather than by a first-come check:

- the **operator's** names (the bundled models `kcloud up` serves, deployments without a tenant)
  contain no `:` — model names cannot contain one either;
- a **tenant's** names are `TENANT:NAME`. A tenant key creating `minilm` creates `acme:minilm`,
  and may call or manage it as `minilm` or `acme:minilm`. Tenant names cannot contain `:`, so
  `acme:` is acme's alone.

Two tenants can then both have a `minilm`, a tenant's `digits-cnn` never joins the operator's
replicas, and creating a name can only ever collide with the creator's own deployments.
"""

from __future__ import annotations

import re

SEPARATOR = ":"
#: The part after `TENANT:` (and the whole of an operator's name): what a model name may be.
LOCAL_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
#: A tenant's name (tenancy's `TENANT_NAME_PATTERN` is built from it): never contains the separator.
TENANT_PART = r"[a-z0-9][a-z0-9-]{0,62}"
#: What a deployment may be called: `NAME` or `TENANT:NAME`.
NAME_PATTERN = rf"^(?:{TENANT_PART}{SEPARATOR})?{LOCAL_NAME}$"
_NAME = re.compile(NAME_PATTERN)


class DeploymentNameError(ValueError):
    """A name outside the caller's name space (the message says whose names look how)."""


def owner_of(name: str) -> str | None:
    """The tenant whose name space `name` is in; None for the operator's."""
    tenant, sep, _ = name.partition(SEPARATOR)
    return tenant if sep else None


def qualify(tenant: str | None, name: str) -> str:
    """The served name of a deployment called `name` by `tenant` (None: the operator).

    Raises `DeploymentNameError` for a name in another name space; the message names only the
    caller's own rule, so it reveals nothing about other tenants.
    """
    if not _NAME.fullmatch(name):
        raise DeploymentNameError(
            f"{name!r} is not a valid deployment name (letters, digits, '.', '_', '-', at most 128; "
            f"a tenant's names may start with 'TENANT:')")
    owner = owner_of(name)
    if tenant is None:
        if owner is not None:
            raise DeploymentNameError(
                f"{name!r} is a tenant's name (TENANT:NAME); the operator's deployments are named "
                f"without ':', or give the tenant the deployment is for")
        return name
    if owner is None:
        return f"{tenant}{SEPARATOR}{name}"
    if owner != tenant:
        raise DeploymentNameError(
            f"tenant {tenant!r} names its deployments NAME or {tenant}{SEPARATOR}NAME; "
            f"{name!r} is not in its name space")
    return name


def resolve(tenant: str | None, name: str) -> str:
    """The served name that `name` means to a caller of `tenant` (None: the operator, an admin).

    A tenant's bare `minilm` means its `acme:minilm`; anything with a `:` is taken as written,
    so it can only reach the caller's own name space or nothing it may see.
    """
    if tenant is None or SEPARATOR in name:
        return name
    return f"{tenant}{SEPARATOR}{name}"
