"""The shipped caption corpus, user caption files, and the corpus generator's reproducibility."""

import gzip
import re
import subprocess
import sys
from pathlib import Path

import pytest

from perfusion_core.captions import DEFAULT_CAPTIONS, load_captions
from perfusion_core.errors import PerfusionError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped() -> list[str]:
    return load_captions(DEFAULT_CAPTIONS)


def test_shipped_corpus_is_large_and_varied(shipped):
    assert len(shipped) >= 20_000
    assert all(2 <= len(c.split()) <= 60 for c in shipped)
    assert len(set(shipped)) >= 0.99 * len(shipped)
    vocab = {w for c in shipped for w in re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", c.lower())}
    assert len(vocab) >= 3_000


def test_default_is_the_shipped_file_unless_the_environment_names_one(shipped, tmp_path, monkeypatch):
    monkeypatch.delenv("PERFUSION_CAPTIONS", raising=False)
    assert load_captions() == shipped
    (tmp_path / "mine.txt").write_text("a photo of a cat\n")
    monkeypatch.setenv("PERFUSION_CAPTIONS", str(tmp_path / "mine.txt"))
    assert load_captions() == ["a photo of a cat"]
    assert load_captions(DEFAULT_CAPTIONS) == shipped


def test_user_text_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my captions\n\n  a photo of a cat  \r\n\t\n# a comment\na red car\n", encoding="utf-8")
    assert load_captions(path) == ["a photo of a cat", "a red car"]
    assert load_captions(str(path)) == ["a photo of a cat", "a red car"]


def test_user_gzip_file(tmp_path):
    path = tmp_path / "mine.txt.gz"
    path.write_bytes(gzip.compress("un café à Paris\n# skip\nthree dogs\n".encode()))
    assert load_captions(path) == ["un café à Paris", "three dogs"]


def test_missing_file_says_so(tmp_path):
    with pytest.raises(PerfusionError, match=r"does not exist: give a UTF-8 text file.*one caption per line"):
        load_captions(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [b"", b"\n  \n# only a comment\n", gzip.compress(b"")],
                         ids=["zero-bytes", "comments-only", "empty-gzip"])
def test_empty_file_says_so(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(PerfusionError, match=r"is empty .*one caption per line"):
        load_captions(path)


@pytest.mark.parametrize(("content", "message"), [
    (b"caf\xe9 latte\n", "is not UTF-8 text"),
    (gzip.compress(b"a cat\n" * 100)[:-6], "is not a valid gzip file"),
    (b"\x1f\x8b" + b"not gzip at all", "is not a valid gzip file"),
], ids=["latin-1", "truncated-gzip", "fake-gzip"])
def test_undecodable_file_says_so(tmp_path, content, message):
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(content)
    with pytest.raises(PerfusionError, match=message):
        load_captions(path)


def test_directory_is_not_a_caption_file(tmp_path):
    with pytest.raises(PerfusionError, match="cannot read caption file"):
        load_captions(tmp_path)


def test_generator_reproduces_shipped_file(tmp_path):
    out = tmp_path / "captions.txt.gz"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_captions.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    assert out.read_bytes() == DEFAULT_CAPTIONS.read_bytes()
