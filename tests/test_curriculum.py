"""Curriculum text files and ID lists."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simfluence_cli.errors import InputError
from simfluence_cli.io.curriculum import parse_curriculum, read_curriculum, read_id_list

ID = st.text(alphabet="abcxyz0129_-./", min_size=1, max_size=6)


@given(
    st.lists(st.lists(ID, min_size=1, max_size=4), min_size=1, max_size=20),
    st.lists(st.sampled_from(["", "# note", "   ", "\t# x"]), max_size=20),
)
def test_round_trip_with_comments_and_blanks(batches, noise):
    lines, expect_lines = [], []
    for k, b in enumerate(batches):
        if k < len(noise):
            lines.append(noise[k])
        lines.append("  ".join(b) + ("  # trailing" if k % 2 else ""))
        expect_lines.append(len(lines))
    cur = parse_curriculum("\n".join(lines) + "\n", "c.txt")
    assert cur.batches == batches and cur.lines == expect_lines and len(cur) == len(batches)


def test_locate_reports_first_line():
    cur = parse_curriculum("# header\na b\n\nc a\nd\n")
    assert cur.locate({"a", "d", "zz"}) == [("a", 2), ("d", 5)]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="c.txt: no training steps"):
        parse_curriculum("# only comments\n\n", "c.txt")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"a b\n\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_curriculum(str(bad))
    with pytest.raises(InputError, match="cannot read"):
        read_curriculum(str(tmp_path / "missing.txt"))


def test_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a b\nc\n"))
    cur = read_curriculum("-")
    assert cur.batches == [["a", "b"], ["c"]] and cur.source == "<stdin>"


def test_id_lists(tmp_path, monkeypatch):
    assert read_id_list("a, b,,c") == ["a", "b", "c"]
    f = tmp_path / "ids.txt"
    f.write_text("# tests\nt1 t2\nt3  # last\n")
    assert read_id_list(f"@{f}") == ["t1", "t2", "t3"]
    monkeypatch.setattr("sys.stdin", io.StringIO("x\ny\n"))
    assert read_id_list("@-") == ["x", "y"]
    with pytest.raises(InputError, match="empty list"):
        read_id_list(" , ")
    with pytest.raises(InputError, match="cannot read"):
        read_id_list(f"@{tmp_path / 'none'}")
