import math

import pytest

from orpheus_local.params import SynthesisParams


def test_defaults_follow_the_contract():
    p = SynthesisParams(text="hi")
    assert (p.voice, p.temperature, p.top_p, p.max_new_tokens, p.repetition_penalty) == ("dan", 0.6, 0.95, 1200, 1.1)


def test_range_edges_are_accepted():
    SynthesisParams(text="x", temperature=0.1, top_p=0.1, max_new_tokens=100, repetition_penalty=1.0)
    SynthesisParams(text="x", temperature=1.5, top_p=1, max_new_tokens=2000, repetition_penalty=2)


def test_a_voice_is_checked_for_its_form_only():
    # Which names exist is the checkpoint's to say (test_voices.py); here a name is only tidied:
    # spaces around it go, its case stays, and it is NFC ("한" typed decomposed is the same name).
    assert SynthesisParams(text="x", voice=" Tara ").voice == "Tara"
    assert SynthesisParams(text="x", voice="\u1112\u1161\u11ab").voice == "\ud55c"
    assert SynthesisParams(text="x", voice="bob").voice == "bob"
    assert SynthesisParams(text="x", voice=None).voice is None


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.09), ("temperature", 1.51), ("temperature", "0.6"), ("temperature", True),
        ("temperature", math.nan), ("temperature", math.inf), ("temperature", None),
        ("top_p", 0.0), ("top_p", 1.01), ("top_p", [0.5]),
        ("max_new_tokens", 99), ("max_new_tokens", 2001), ("max_new_tokens", 150.5), ("max_new_tokens", "200"),
        ("repetition_penalty", 0.99), ("repetition_penalty", 2.01), ("repetition_penalty", -math.inf),
        ("voice", "  "), ("voice", 3),
        ("text", ""), ("text", "   \n"), ("text", None), ("text", 42),
        ("seed", -1), ("seed", 1.5), ("seed", 2**63),
    ],
)
def test_invalid_values_raise_naming_the_field(field, value):
    kwargs = {"text": "hello", field: value}
    with pytest.raises(ValueError, match=rf"^{field}:"):
        SynthesisParams(**kwargs)


def test_integral_float_max_new_tokens_becomes_int():
    assert SynthesisParams(text="x", max_new_tokens=300.0).max_new_tokens == 300
