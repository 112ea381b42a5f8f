"""SAA+ expert knowledge: shipped tables match METHODS §2.7, prompt assembly, validation errors, Table 2."""
from __future__ import annotations

import pytest

from tasks.saa_plus.expert import (ExpertError, ExpertTable, general_prompts, load_table, paper_table2,
                                   prompts_for)

MVTEC = ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut", "metal_nut",
         "pill", "screw", "toothbrush", "transistor", "zipper"]
VISA = ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
        "pcb4", "pipe_fryum"]

GOOD_ENTRY = """\
categories:
  widget:
    defect_captions: ["bent pin.", "scratch"]
    filter_word: widget
    object_prompt: widget
    object_count: 2
    k: 3
    area_threshold: 0.4
"""


def _write(tmp_path, text, name="mine.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_tables_have_exactly_the_dataset_categories():
    mvtec, visa = load_table("mvtec"), load_table("visa")
    assert isinstance(mvtec, ExpertTable) and mvtec.dataset == "mvtec" and visa.dataset == "visa"
    assert sorted(mvtec.categories) == sorted(MVTEC)
    assert sorted(visa.categories) == sorted(VISA)


def test_mvtec_all_n1_dissimilar_k5():
    for name, e in load_table("mvtec").categories.items():
        assert (e.object_count, e.similar_objects, e.k) == (1, False, 5), name


def test_mvtec_spot_checks():
    cats = load_table("mvtec").categories
    b = cats["bottle"]
    assert b.defect_captions == ["broken part. contamination. white broken."]
    assert (b.filter_word, b.object_prompt, b.area_threshold) == ("bottle", "bottle", 0.3)
    m = cats["metal_nut"]
    assert (m.filter_word, m.object_prompt, m.area_threshold) == ("nut", "metal_nut", 1.0)
    assert m.defect_captions == ["blue defect. black defect. red defect. scratch."]
    assert cats["carpet"].defect_captions == ["black hole", "thread", "defect."]
    assert cats["screw"].area_threshold == 0.1 and cats["capsule"].area_threshold == 0.6
    # no trailing-comma quirk anywhere
    assert not any(e.object_prompt.endswith(",") for e in cats.values())


def test_visa_spot_checks():
    cats = load_table("visa").categories
    c = cats["candle"]
    assert (c.object_count, c.similar_objects, c.k, c.area_threshold) == (4, True, 1, 0.3)
    assert c.object_prompt == "candle"
    cap = cats["capsules"]
    assert (cap.object_count, cap.k, cap.area_threshold, cap.object_prompt) == (20, 15, 1.0, "capsule")
    assert cap.defect_captions == ["black melt. dark liquid.", "bubble"] and cap.filter_word == "capsules"
    p = cats["pcb1"]
    assert p.object_prompt == "printed_circuit_board" and p.filter_word == "pcb" and len(p.defect_captions) == 4
    assert p.defect_captions[-1] == "white circle."
    m2 = cats["macaroni2"]
    assert (m2.k, m2.object_count, m2.similar_objects, m2.filter_word) == (50, 4, False, "macaroni")
    assert cats["macaroni1"].similar_objects is True
    assert cats["cashew"].area_threshold == 0.05 and cats["cashew"].k == 17
    assert cats["fryum"].defect_captions[0].endswith("color crack. break")
    assert cats["pipe_fryum"].filter_word == "fryum" and cats["pipe_fryum"].object_prompt == "pipe_fryum"
    assert len(cats["pcb4"].defect_captions) == 6


def test_general_prompts_fill_the_folder_name():
    assert general_prompts("metal_nut") == [("defect on metal_nut", "metal_nut"), ("damage on metal_nut", "metal_nut"),
                                            ("flaw on metal_nut", "metal_nut")]


def test_prompts_for_order_and_filter_words():
    p = prompts_for(load_table("mvtec"), "carpet")
    assert p.known is True and p.warning is None
    assert p.captions == [("defect on carpet", "carpet"), ("damage on carpet", "carpet"), ("flaw on carpet", "carpet"),
                          ("black hole", "carpet"), ("thread", "carpet"), ("defect.", "carpet")]
    n = prompts_for(load_table("mvtec"), "metal_nut")
    assert n.captions[0] == ("defect on metal_nut", "metal_nut")
    assert n.captions[3:] == [("blue defect. black defect. red defect. scratch.", "nut")]
    v = prompts_for(load_table("visa"), "pcb1")
    assert [w for _, w in v.captions] == ["pcb1"] * 3 + ["pcb"] * 4
    assert (v.object_prompt, v.object_count, v.k, v.area_threshold) == ("printed_circuit_board", 1, 1, 0.3)


def test_language_false_keeps_only_general_prompts_but_properties():
    p = prompts_for(load_table("visa"), "candle", language=False)
    assert p.captions == general_prompts("candle")
    assert (p.object_count, p.k, p.area_threshold, p.known) == (4, 1, 0.3, True)


@pytest.mark.parametrize("table", [None, "mvtec"])
def test_unknown_category_falls_back_with_warning(table):
    p = prompts_for(load_table(table) if table else None, "gearbox")
    assert p.known is False
    assert p.captions == general_prompts("gearbox")
    assert (p.object_prompt, p.object_count, p.k, p.area_threshold) == ("gearbox", 1, 5, 0.9)
    assert p.warning is not None and p.warning.startswith("category 'gearbox' has no entry in ")
    assert "using the general prompts and default properties" in p.warning
    if table:
        assert "'mvtec'" in p.warning


def test_user_yaml_with_new_category_is_loaded_and_used(tmp_path):
    t = load_table(str(_write(tmp_path, "dataset: mine\n" + GOOD_ENTRY)))
    assert t.dataset == "mine" and list(t.categories) == ["widget"]
    p = prompts_for(t, "widget")
    assert p.known and p.captions[3:] == [("bent pin.", "widget"), ("scratch", "widget")]
    assert (p.object_count, p.k, p.area_threshold) == (2, 3, 0.4)
    assert load_table(_write(tmp_path, GOOD_ENTRY, "shop.yaml")).dataset == "shop"  # defaults to file stem


@pytest.mark.parametrize("old, new, field, words", [
    ("    k: 3\n", "    k: 0\n", "k", "greater than or equal to 1"),
    ("    k: 3\n", "", "k", "Field required"),
    ("    k: 3\n", "    k: three\n", "k", "valid integer"),
    ("    area_threshold: 0.4\n", "    area_threshold: 1.5\n", "area_threshold", "less than or equal to 1"),
    ("    area_threshold: 0.4\n", "    area_threshold: 0\n", "area_threshold", "greater than 0"),
    ("    object_count: 2\n", "    object_count: 2\n    object_cuont: 2\n", "object_cuont", "unknown field"),
    ('    defect_captions: ["bent pin.", "scratch"]\n', "    defect_captions: bent pin.\n", "defect_captions",
     "valid list"),
    ("    filter_word: widget\n", "    filter_word: 7\n", "filter_word", "valid string"),
])
def test_bad_entry_names_file_category_and_field(tmp_path, old, new, field, words):
    assert old in GOOD_ENTRY
    path = _write(tmp_path, GOOD_ENTRY.replace(old, new))
    with pytest.raises(ExpertError) as err:
        load_table(str(path))
    msg = str(err.value)
    assert "mine.yaml" in msg and "category 'widget'" in msg and f"{field}:" in msg and words in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, GOOD_ENTRY.replace("    k: 3\n", "    k: [3\n"))
    with pytest.raises(ExpertError, match=r"mine\.yaml: line \d+, column \d+: YAML syntax error"):
        load_table(str(path))


@pytest.mark.parametrize("text, words", [
    ("- just\n- a list\n", "expected a mapping"),
    ("dataset: x\n", "'categories' must be a non-empty mapping"),
    ("dataset: x\ncategory:\n  a: 1\n", "unknown top-level field(s) ['category']"),
    ("categories:\n  widget: [1, 2]\n", "category 'widget': expected a mapping of fields"),
])
def test_bad_file_structure(tmp_path, text, words):
    with pytest.raises(ExpertError) as err:
        load_table(str(_write(tmp_path, text)))
    assert "mine.yaml" in str(err.value) and words in str(err.value)


def test_missing_table_is_reported(tmp_path):
    with pytest.raises(ExpertError, match="not found"):
        load_table(str(tmp_path / "nope.yaml"))
    with pytest.raises(ExpertError, match="not found"):
        load_table("mvtek")


def test_paper_table2_values():
    t = paper_table2()
    assert set(t) == {"saa", "saa_plus", "no_language", "no_property", "no_saliency", "no_confidence"}
    assert t["saa_plus"] == {"mvtec": 39.40, "visa": 27.07}
    assert t["no_language"] == {"mvtec": 36.49, "visa": 23.29}
    assert t["no_property"] == {"mvtec": 24.43, "visa": 19.28}
    assert t["no_saliency"] == {"mvtec": 38.79, "visa": 19.39}
    assert t["no_confidence"] == {"mvtec": 38.68, "visa": 26.70}
    assert t["saa"] == {"mvtec": None, "visa": None}
    assert all(t["saa_plus"][d] >= row[d] for row in t.values() for d in row if row[d] is not None)
