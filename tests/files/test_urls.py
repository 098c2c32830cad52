"""``amfs://`` URLs: the exact round trip of any valid name, malformed URLs, share tokens, URLs found in prose."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmas.errors import FileExpiredError, InvalidFileURLError, SessionMismatchError
from flowmas.files.urls import (
    build_url,
    get_urls_from_text,
    new_signature,
    parse_url,
    share_url,
    sign_share,
    validate_filename,
    verify_share,
    with_params,
)

SIG = "0123456789abcdef0123456789abcdef"
SECRET = b"s" * 32


def _valid_char(char: str) -> bool:
    return unicodedata.category(char) not in ("Cc", "Cs")


names = st.text(st.characters(codec="utf-8").filter(_valid_char), min_size=1, max_size=80)
tricky = st.sampled_from(["a#b.txt", "data[1].csv", "100% sure?.md", "x y 'z' \"q\".txt", "é/../ü\\.txt", "end.",
                          "a&b=c.txt", "+plus+", "%41", "‮gnp.exe", "文件.csv"])


@settings(max_examples=150, deadline=None)
@given(st.one_of(names, tricky))
def test_any_valid_name_round_trips_exactly(name):
    url = build_url(SIG, name)
    assert parse_url(url) == (SIG, name, {})
    assert not url.endswith(".")
    assert all(char.isascii() and char.isprintable() and char != " " for char in url)


@settings(max_examples=50, deadline=None)
@given(st.one_of(names, tricky), st.dictionaries(st.sampled_from(["head", "grep", "jsonpath", "columns"]),
                                                   names, max_size=3))
def test_params_round_trip(name, params):
    assert parse_url(build_url(SIG, name, params)) == (SIG, name, params)


@pytest.mark.parametrize(("url", "says"), [
    ("http://x", "must start with 'amfs://'"),
    (f"amfs://{SIG}", "no '_'"),
    (f"amfs://{SIG}_", "no file name"),
    ("amfs://0123_a.txt", "malformed signature"),
    (f"amfs://{SIG.upper()}_a.txt", "malformed signature"),
    (f"amfs://{SIG}_a b.txt", "whitespace"),
    (f"amfs://{SIG}_a#b", "raw '#'"),
    (f"amfs://{SIG}_a%zz", "%HH"),
    (f"amfs://{SIG}_%ff", "not percent-encoded UTF-8"),
    (f"amfs://{SIG}_a%0Ab", "control character"),
    (f"amfs://{SIG}_a?head=1&head=2", "twice"),
    (f"amfs://{SIG}_a?=1", "without a name"),
])
def test_malformed_urls_are_refused_saying_what(url, says):
    with pytest.raises(InvalidFileURLError, match=says.replace("?", r"\?").replace("(", r"\(")):
        parse_url(url)


def test_lenient_spelling_an_llm_may_write():
    parsed = parse_url(f" <url>amfs://{SIG}_a.json?jsonpath=$.a[0]&columns=a,b&grep=x+y</url> ")
    assert parsed.params == {"jsonpath": "$.a[0]", "columns": "a,b", "grep": "x y"}


def test_control_characters_are_refused_in_names():
    for bad in ["a\nb", "a\x00", "tab\there", "del\x7f", "nel\x85"]:
        with pytest.raises(InvalidFileURLError, match="control character"):
            validate_filename(bad)
    with pytest.raises(InvalidFileURLError, match="empty"):
        validate_filename("")
    with pytest.raises(InvalidFileURLError, match="at most 1024"):
        validate_filename("x" * 1025)


def test_with_params_sets_and_removes():
    url = build_url(SIG, "a.csv", {"head": "5"})
    assert parse_url(with_params(url, head=None, resolve=True)).params == {"resolve": "true"}


def test_share_sign_verify_tamper_expire():
    url = build_url(SIG, "r.txt")
    shared = share_url(url, 2_000_000_000, SECRET)
    assert verify_share(shared, SECRET, now=1_900_000_000) == SIG
    token = parse_url(shared).params["share"]
    exp, mac = token.split(".")
    for forged in [f"{int(exp) + 1}.{mac}", f"{exp}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}", f"{exp}.x"]:
        with pytest.raises(SessionMismatchError):
            verify_share(with_params(url, share=forged), SECRET, now=1_900_000_000)
    with pytest.raises(SessionMismatchError):
        verify_share(shared, b"t" * 32, now=1_900_000_000)
    other = new_signature()
    with pytest.raises(SessionMismatchError, match="another file"):
        verify_share(shared, SECRET, now=1_900_000_000, signature=other)
    with pytest.raises(FileExpiredError, match="expired"):
        verify_share(shared, SECRET, now=2_000_000_000)
    with pytest.raises(SessionMismatchError, match="not a share URL"):
        verify_share(url, SECRET, now=0)
    assert sign_share(SIG, 5.9, SECRET).startswith("5.")


def test_urls_found_in_prose_stop_at_the_grammar():
    a = build_url(SIG, "report (final).csv", {"head": "5"})
    b = build_url(new_signature(), "x.txt")
    text = f'See {a}. Also "{b}", and <url>{a}</url>; head=5, then amfs://{SIG}_y.json?resolve=true end.'
    found = get_urls_from_text(text)
    assert found == [a, b, a, f"amfs://{SIG}_y.json?resolve=true"]
    assert get_urls_from_text("amfs://nothing here") == []
