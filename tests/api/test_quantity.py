"""kubetune.api.quantity reads quantities as the API server does; kubernetes' own parser is the reference."""

from __future__ import annotations

import pytest
from kubernetes.utils import parse_quantity

from kubetune.api import quantity

VALID = ["4", 4, "500m", "16Gi", "1.5Gi", "8e9", "8E", "1Ei", "8G", "128974848", "129e6", "129M", "123Mi", ".5", "1.",
         "+3k", "-2M", "1e-3", "100n", "3u", "1.5e3"]  # fmt: skip
INVALID = ["8GB", "16gi", "Gi", "e3", "8i", "1e1.5", "", "1 Gi", "1,5Gi", "0x10", "16GiB"]
TOO_LARGE = ["1e999999", "1e10000000", "9Ei", "10E", "9223372036854775808"]


@pytest.mark.parametrize("value", VALID, ids=str)
def test_the_api_servers_forms_have_the_values_kubernetes_gives_them(value):
    assert quantity.parse(value) == parse_quantity(value)


@pytest.mark.parametrize("value", INVALID)
def test_a_typo_is_refused_in_one_line_naming_it(value):
    with pytest.raises(ValueError, match=f"^{value!r} is not a Kubernetes quantity"):
        quantity.parse(value)


@pytest.mark.parametrize("value", TOO_LARGE)
def test_a_quantity_beyond_the_api_limit_is_refused_at_once(value):
    """Before any arithmetic: `1e999999` computed would be a million digits on the operator's event loop."""
    with pytest.raises(ValueError, match=f"^{value!r} is larger than a Kubernetes quantity can be"):
        quantity.parse(value)


def test_the_largest_quantity_is_taken():
    assert quantity.parse("9223372036854775807") == quantity.LIMIT and quantity.parse("7Ei") == 7 * 2**60
