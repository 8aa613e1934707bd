"""Run selector syntax: terms, kinds, unions, exclusions, errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfluence_cli.errors import SelectionError
from simfluence_cli.store.selectors import Term, parse_selector, resolve_selector

RUNS = {
    "fit-000": ["fit"],
    "fit-001": ["fit"],
    "fit-002": ["fit", "odd"],
    "heldout-random-000": ["heldout-random", "heldout"],
    "heldout-leave30-000": ["heldout-leave30", "heldout"],
    "odd": [],  # a run whose id is also a tag name
}


def test_parse_kinds():
    terms = parse_selector("all, fit ,tag:x,run:a*,heldout-*,-fit-001")
    assert terms == [
        Term("all", "all"),
        Term("name", "fit"),
        Term("tag", "x"),
        Term("run", "a*"),
        Term("glob", "heldout-*"),
        Term("name", "fit-001", exclude=True),
    ]
    assert str(terms[-1]) == "-fit-001"


@pytest.mark.parametrize(
    "sel,expected",
    [
        ("all", sorted(RUNS)),
        ("fit", ["fit-000", "fit-001", "fit-002"]),
        ("tag:fit", ["fit-000", "fit-001", "fit-002"]),
        ("heldout-*", ["heldout-leave30-000", "heldout-random-000"]),
        ("run:fit-00[01]", ["fit-000", "fit-001"]),
        ("fit,-fit-001", ["fit-000", "fit-002"]),
        (
            "fit,heldout",
            ["fit-000", "fit-001", "fit-002", "heldout-leave30-000", "heldout-random-000"],
        ),
        ("-fit", ["heldout-leave30-000", "heldout-random-000", "odd"]),  # only exclusions: from all
        ("all,-tag:heldout,-run:fit-00?", ["odd"]),
        ("odd", ["fit-002", "odd"]),  # bare name: the tag and the run id
        ("tag:odd", ["fit-002"]),
        ("run:odd", ["odd"]),
        ("fit-001", ["fit-001"]),
    ],
)
def test_resolve(sel, expected):
    assert resolve_selector(sel, RUNS) == expected


@pytest.mark.parametrize(
    "sel,msg",
    [
        ("fitt", "matches no run"),
        ("fit,-nosuch", "matches no run"),
        ("fit,-fit", "leaves no run"),
        ("", "empty run selector"),
        (" , ", "empty run selector"),
        ("fit,-", "must be followed"),
        ("tag:nosuch", "matches no run"),
    ],
)
def test_errors(sel, msg):
    with pytest.raises(SelectionError, match=msg):
        resolve_selector(sel, RUNS)


def test_error_lists_what_exists():
    with pytest.raises(SelectionError) as exc:
        resolve_selector("fitt", RUNS)
    assert "tags: fit, heldout" in str(exc.value)


def test_explicit_ids_keep_order_and_must_exist():
    assert resolve_selector(["odd", "fit-000", "odd"], RUNS) == ["odd", "fit-000"]
    with pytest.raises(SelectionError, match="nosuch"):
        resolve_selector(["fit-000", "nosuch"], RUNS)


def test_empty_store():
    with pytest.raises(SelectionError, match="no runs"):
        resolve_selector("all", {})


_names = st.sampled_from(["fit", "heldout", "odd", "fit-0*", "heldout-*", "run:odd", "tag:fit"])


@settings(max_examples=60, deadline=None)
@given(st.lists(_names, min_size=1, max_size=4), st.lists(_names, max_size=3))
def test_union_minus_exclusions_law(includes, excludes):
    """'a,b,-c' selects (sel(a) | sel(b)) - sel(c), or raises when that is empty."""
    want = set()
    for t in includes:
        want |= set(resolve_selector(t, RUNS))
    for t in excludes:
        want -= set(resolve_selector(t, RUNS))
    sel = ",".join(includes + ["-" + t for t in excludes])
    if want:
        assert resolve_selector(sel, RUNS) == sorted(want)
    else:
        with pytest.raises(SelectionError):
            resolve_selector(sel, RUNS)
