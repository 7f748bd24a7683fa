"""Text side: class lists in every format, templates, and the cached text classifier."""
from __future__ import annotations

import os

import pytest
import torch

from ovss.errors import InputError
from ovss.text import ClassList, encode_queries, load_templates, parse_classes
from ovss.text import encoder as enc
from ovss.text.classes import parse_lines, parse_text


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return str(p)


# ---------------------------------------------------------------------------------------------- class files
def test_ovss_format_file(tmp_path):
    p = _write(tmp_path, "c.txt", "dog, puppy ,  hound\n\ncat\r\n  sky  \n\n")
    cl = parse_classes(p)
    assert cl.names == ("dog", "cat", "sky")
    assert cl.queries == ("dog", "puppy", "hound", "cat", "sky")
    assert cl.query_to_class == (0, 0, 0, 1, 2)
    assert cl.source == p and len(cl) == 3 and cl.has_synonyms


def test_sclip_format_splits_on_comma_space_only(tmp_path):
    p = _write(tmp_path, "s.txt", "sky, wall, tree\naeroplane\nperson,person in shirt\n")
    cl = parse_classes(p, "sclip")
    assert cl.names == ("sky", "aeroplane", "person,person in shirt")
    assert cl.queries == ("sky", "wall", "tree", "aeroplane", "person,person in shirt")
    assert cl.query_to_class == (0, 0, 0, 1, 2)


def test_proxyclip_format_splits_on_semicolon_space(tmp_path):
    p = _write(tmp_path, "p.txt", "sky; wall\nperson; people, human\ncat\n")
    cl = parse_classes(p, "proxyclip")
    assert cl.queries == ("sky", "wall", "person", "people, human", "cat")
    assert cl.query_to_class == (0, 0, 1, 1, 2)
    assert cl.names == ("sky", "person", "cat")


def test_clearclip_format_splits_on_bare_comma(tmp_path):
    p = _write(tmp_path, "cc.txt", "background\nperson,person in shirt, people\n")
    cl = parse_classes(p, "clearclip")
    # verbatim pieces: the leading space of " people" is kept (the tokenizer strips it)
    assert cl.queries == ("background", "person", "person in shirt", " people")
    assert cl.query_to_class == (0, 1, 1, 1)


def test_lines_format_never_splits(tmp_path):
    p = _write(tmp_path, "l.txt", "wall, brick wall\nfloor; flooring\n")
    cl = parse_classes(p, "lines")
    assert cl.queries == ("wall, brick wall", "floor; flooring")
    assert cl.query_to_class == (0, 1) and not cl.has_synonyms


def test_cliper_format(tmp_path):
    p = _write(tmp_path, "cl.txt", "ground, land  sky,,tree\naeroplane\npotted plant, pot\n")
    cl = parse_classes(p, "cliper")
    assert cl.names == ("background", "aeroplane", "potted plant, pot")
    assert cl.queries == ("ground", "land", "sky", "tree", "aeroplane", "potted plant, pot")
    assert cl.query_to_class == (0, 0, 0, 0, 1, 2)


def test_official_files_shipped_parse_to_the_benchmark_class_counts():
    from ovss.methods.dense import official_classes
    voc_s = parse_classes(official_classes("sclip_naclip", "voc21"), "sclip")
    voc_p = parse_classes(official_classes("proxyclip_trident", "voc21"), "proxyclip")
    assert len(voc_s) == len(voc_p) == 21
    assert voc_s.queries[:26] == voc_p.queries[:26]      # the same 26 background words, two separators
    assert voc_s.names[1:5] == voc_p.names[1:5] == ("aeroplane", "bicycle", "bird", "ship")
    assert voc_s.queries[0] == "sky" and voc_s.names[1] == "aeroplane"
    assert len(parse_classes(official_classes("clearclip", "voc21"), "clearclip")) == 21


def test_unknown_format_is_an_input_error(tmp_path):
    p = _write(tmp_path, "c.txt", "a\n")
    with pytest.raises(InputError, match="class_format"):
        parse_classes(p, "nope")


# ---------------------------------------------------------------------------------------------- lists / strings
def test_list_string_items_are_split_list_items_are_verbatim():
    cl = parse_classes(["dog, puppy", ["person with clothes, people, human"], ("a", "b, c")])
    assert cl.names == ("dog", "person with clothes, people, human", "a")
    assert cl.queries == ("dog", "puppy", "person with clothes, people, human", "a", "b, c")
    assert cl.query_to_class == (0, 0, 1, 2, 2)


def test_plain_string_commas_separate_classes():
    cl = parse_classes("sky, hill, tree, horse, grass")
    assert cl.names == ("sky", "hill", "tree", "horse", "grass")
    assert not cl.has_synonyms


def test_semicolon_string_rule():
    cl = parse_classes("a; b, c")
    assert cl.names == ("a", "b") and cl.queries == ("a", "b", "c") and cl.query_to_class == (0, 1, 1)
    cl = parse_text("horse; grass, lawn\nsky")
    assert cl.names == ("horse", "grass", "sky") and cl.query_to_class == (0, 1, 1, 2)


def test_empty_lists_and_strings_are_refused(tmp_path):
    for bad in ([], "", " , ", [""]):
        with pytest.raises(InputError, match="empty"):
            parse_classes(bad)
    with pytest.raises(InputError, match="empty"):
        parse_classes(_write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(InputError, match="class 2 is empty"):
        parse_classes(["dog", []])
    with pytest.raises(InputError, match="class 2 is empty"):   # never dropped: it would shift the channels
        parse_classes(["cat", "", "dog"])
    with pytest.raises(InputError):
        parse_classes(None)


def test_duplicate_classes_are_refused_with_a_clear_message():
    with pytest.raises(InputError, match="twice") as e:
        parse_classes(["dog", "cat", "Dog"])
    assert "'Dog'" in str(e.value) and "classes 1 and 3" in str(e.value)
    with pytest.raises(InputError, match="twice"):
        parse_classes("sky, tree, sky")


def test_missing_class_file_and_bad_items():
    with pytest.raises(InputError, match="no such class file"):
        parse_classes("/nonexistent/classes.txt")
    with pytest.raises(InputError, match="give a string or a list"):
        parse_classes(["dog", 3])


def test_classlist_is_accepted_by_parse_lines():
    cl = parse_lines(["a, b", "c"], "ovss")
    assert isinstance(cl, ClassList) and cl.queries == ("a", "b", "c")


# ---------------------------------------------------------------------------------------------- templates
def test_templates():
    t = load_templates("imagenet")
    assert len(t) == 80 and all("{}" in x for x in t)
    assert load_templates("none") == load_templates(None) == ("{}",)   # None: what `--set templates=none` gives
    assert load_templates(["a photo of a {}."]) == ("a photo of a {}.",)
    with pytest.raises(InputError):
        load_templates(["no placeholder"])
    with pytest.raises(InputError, match="not a known set"):
        load_templates("no-such-set")


# ---------------------------------------------------------------------------------------------- text encoder
TEMPLATES = ("a photo of a {}.", "a drawing of the {}.", "{}")


def _reference_classifier(clip, queries, templates):
    """spec §1.5 with open_clip's own full 77-token encode_text."""
    rows = []
    with torch.no_grad():
        for q in queries:
            tok = clip.tokenize([t.format(q) for t in templates])
            e = clip.model.encode_text(tok).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
    return torch.stack(rows)


def test_truncated_encode_text_equals_full_context(tiny_clip):
    tok = tiny_clip.tokenize(["a", "a photo of a dog with a very long and winding description of its fur", ""])
    assert tok.shape == (3, 77)
    with torch.no_grad():
        full = tiny_clip.model.encode_text(tok)
    fast = tiny_clip.encode_text(tok)
    assert fast.shape == full.shape == (3, tiny_clip.info.embed_dim)
    assert (fast - full).abs().max().item() < 1e-5


def test_encode_queries_matches_the_spec_formula(tiny_clip):
    qs = ["dog", "grass, lawn", "sky"]
    out = encode_queries(tiny_clip, qs, TEMPLATES, use_cache=False)
    ref = _reference_classifier(tiny_clip, qs, TEMPLATES)
    assert out.dtype == torch.float32 and out.shape == (3, tiny_clip.info.embed_dim)
    assert (out - ref).abs().max().item() < 1e-5
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_duplicate_queries_keep_their_positions(tiny_clip):
    out = encode_queries(tiny_clip, ["cat", "dog", "cat"], TEMPLATES, use_cache=False)
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls, self.queries = fn, 0, []

    def __call__(self, clip, queries, templates):
        self.calls += 1
        self.queries += list(queries)
        return self.fn(clip, queries, templates)


def test_memory_and_disk_cache_equal_fresh_embeddings(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_TEXT_CACHE", "1")      # the disk cache on, whatever other tests set
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path))
    monkeypatch.setattr(enc, "_MEMORY", {})
    counter = _Counter(enc._encode_new)
    monkeypatch.setattr(enc, "_encode_new", counter)
    qs = ["zebra", "yak", "xylophone"]
    fresh = encode_queries(tiny_clip, qs, TEMPLATES, use_cache=False)
    assert counter.calls == 1
    first = encode_queries(tiny_clip, qs, TEMPLATES)
    assert counter.calls == 2
    files = os.listdir(tmp_path / "text")
    assert len(files) == 1 and files[0].endswith(".pt")
    # memory hit
    again = encode_queries(tiny_clip, qs[::-1], TEMPLATES)
    assert counter.calls == 2
    # disk hit in a "new process" (empty memory cache)
    monkeypatch.setattr(enc, "_MEMORY", {})
    disk = encode_queries(tiny_clip, qs, TEMPLATES)
    assert counter.calls == 2
    assert torch.equal(first, fresh) and torch.equal(disk, fresh) and torch.equal(again, fresh.flip(0))
    # a new list encodes only its new names
    encode_queries(tiny_clip, ["yak", "walrus"], TEMPLATES)
    assert counter.calls == 3 and counter.queries[-1:] == ["walrus"]
    # other templates are another cache entry
    encode_queries(tiny_clip, ["yak"], TEMPLATES[:1])
    assert counter.calls == 4


def test_corrupt_disk_cache_is_rebuilt(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_TEXT_CACHE", "1")      # the disk cache on, whatever other tests set
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path))
    monkeypatch.setattr(enc, "_MEMORY", {})
    path = enc._disk_path(enc._cache_key(tiny_clip, TEMPLATES))
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"garbage")
    out = encode_queries(tiny_clip, ["owl"], TEMPLATES)
    ref = encode_queries(tiny_clip, ["owl"], TEMPLATES, use_cache=False)
    assert torch.equal(out, ref)
    assert "owl" in torch.load(path, weights_only=True)


def test_disk_cache_can_be_turned_off(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path))
    monkeypatch.setenv("OVSS_TEXT_CACHE", "0")
    monkeypatch.setattr(enc, "_MEMORY", {})
    encode_queries(tiny_clip, ["heron"], TEMPLATES)
    assert not (tmp_path / "text").exists()


def test_second_segmenter_with_same_classes_does_no_text_encoding(tiny_clip, monkeypatch):
    import ovss
    counter = _Counter(enc._encode_new)
    monkeypatch.setattr(enc, "_encode_new", counter)
    kw = dict(method="maskclip", classes=["quokka", "wombat, marsupial"], clip="tiny-test", clip_weights="random",
              device="cpu", templates="imagenet_subset7")
    s1 = ovss.Segmenter(**kw)
    n = counter.calls
    assert n <= 1
    s2 = ovss.Segmenter(**kw)
    assert counter.calls == n
    assert torch.equal(s1.method.text, s2.method.text)
    assert s1.method.clip is s2.method.clip is tiny_clip


@pytest.mark.slow
def test_truncated_encode_text_equals_full_context_vitb16(vitb16):
    tok = vitb16.tokenize(["a photo of a dog.", "itap of the large horse standing on a hill under a blue sky", "x"])
    with torch.no_grad():
        full = vitb16.model.encode_text(tok)
    assert (vitb16.encode_text(tok) - full).abs().max().item() < 1e-5
