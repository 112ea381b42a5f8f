"""Deterministic generated WordPiece vocabularies for seeded-random GroundingDINO text encoders.

The layout copies bert-base-uncased where it matters: ``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102,
``[MASK]`` 103 and the printable ASCII characters (no upper case) from id 999, so ``"."`` is 1012 and ``"?"`` 1029.
transformers' GroundingDINO hard-codes exactly these ids (``SPECIAL_TOKENS = [101, 102, 1012, 1029]``) to split a
caption into phrases, so tiny and random models split captions the same way the official one does.
Every lower-case ASCII word tokenises without ``[UNK]`` (single letters + ``##`` letters are always present).
"""
from __future__ import annotations

import itertools
import string
from collections.abc import Iterator

# Words anomaly-detection prompts use, plus common English filler; order is part of the vocab (ids follow it).
COMMON_WORDS: tuple[str, ...] = tuple("""
the of and to in is on for with as by at from that this it an be are or was which not but have has had
a an one two three four five six seven eight nine ten all any some each every other more most less few many
no yes up down left right top bottom side edge center middle inner outer front back above below under over
defect defects defective damage damaged flaw flawed crack cracked cracks hole holes scratch scratched scratches
stain stains stained anomaly anomalies anomalous abnormal abnormality broken break fault faulty missing
dent dents dented bent cut cuts chip chipped contamination contaminated dirt dirty dust spot spots mark marks
bubble bubbles burn burnt rough smooth fold folded wrinkle wrinkled tear torn rip ripped loose misplaced
deformation deformed deform squeeze squeezed poke poked thread glue liquid oil color colour colored print
fabric leather metal wood tile carpet grid bottle cable capsule hazelnut nut screw pill toothbrush
transistor zipper pcb circuit board wire wires lead leads pin pins connector component surface object
part piece region area small large tiny big long short thin thick wide narrow round square line lines
black white red green blue yellow orange purple pink brown gray grey dark light bright shiny dull clear
foreign material residue rust corrosion paint coating layer crease kink gap split splitting combined
good normal perfect clean intact whole complete fine ok okay
""".split())


def _dedupe(tokens: list[str]) -> list[str]:
    seen: set[str] = set()
    return [t for t in tokens if not (t in seen or seen.add(t))]


def _filler_pieces() -> Iterator[str]:
    """Endless deterministic extra pieces: 'aa'.., '##aa'.., 'aaa'.., '##aaa'.., ..."""
    for n in itertools.count(2):
        for prefix in ("", "##"):
            for combo in itertools.product(string.ascii_lowercase, repeat=n):
                yield prefix + "".join(combo)


def build_vocab(size: int | None = None) -> dict[str, int]:
    """Token -> id. ``size`` None: the natural size (~1.4k entries); otherwise padded with generated
    pieces to exactly ``size`` entries (30522 gives bert-base-uncased's embedding table)."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 99 + 999 - len(tokens))]
    assert len(tokens) == 999
    tokens += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens += ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens = _dedupe(tokens + list(COMMON_WORDS))
    if size is not None:
        if size < len(tokens):
            raise ValueError(f"vocab size {size} is smaller than the base vocab ({len(tokens)})")
        present = set(tokens)
        for piece in _filler_pieces():
            if len(tokens) >= size:
                break
            if piece not in present:
                tokens.append(piece)
                present.add(piece)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102 and vocab["."] == 1012 and vocab["?"] == 1029
    return vocab


def build_tokenizer(size: int | None = None):
    """A ``BertTokenizerFast`` (lower-casing WordPiece) over :func:`build_vocab`. Nothing is read from disk or hub."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=build_vocab(size), do_lower_case=True)
