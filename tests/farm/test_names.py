"""Served names: the name space a name is in is written in the name (issue 13, items 1 and 5)."""

from __future__ import annotations

import pytest

from kcloud.farm.names import DeploymentNameError, owner_of, qualify, resolve


def test_a_tenants_names_are_qualified_into_its_name_space():
    assert qualify("acme", "minilm") == "acme:minilm"
    assert qualify("acme", "acme:minilm") == "acme:minilm"
    assert owner_of("acme:minilm") == "acme"
    assert owner_of("digits-cnn") is None


def test_the_operators_names_have_no_tenant_part():
    assert qualify(None, "digits-cnn") == "digits-cnn"
    with pytest.raises(DeploymentNameError, match="tenant's name"):
        qualify(None, "acme:minilm")


@pytest.mark.parametrize("name", ["beta:minilm", "beta:never-made"])
def test_another_tenants_name_space_is_refused_with_words_that_reveal_nothing(name):
    with pytest.raises(DeploymentNameError) as refused:
        qualify("acme", name)
    assert str(refused.value).replace(name, "<name>") == (
        "tenant 'acme' names its deployments NAME or acme:NAME; '<name>' is not in its name space")


@pytest.mark.parametrize("name", ["", "a:b:c", "Acme:x", ":x", "x:", "-x", "x\n", "x" * 129, "a b"])
def test_malformed_names_are_refused(name):
    with pytest.raises(DeploymentNameError, match="not a valid deployment name"):
        qualify("acme", name)


def test_resolve_reads_a_tenants_bare_name_in_its_own_name_space():
    assert resolve("acme", "minilm") == "acme:minilm"
    assert resolve("acme", "beta:minilm") == "beta:minilm"  # as written: isolation then answers 404
    assert resolve(None, "minilm") == "minilm"
