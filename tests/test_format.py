import numpy as np
import pytest

from orpheus_local import tokens as fmt
from orpheus_local.weights.checkpoint import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(demo_dirs):
    return load_tokenizer(demo_dirs[0])


def test_special_ids_match_the_spec():
    assert (fmt.START_OF_HUMAN, fmt.END_OF_HUMAN, fmt.START_OF_AI, fmt.START_OF_SPEECH) == (128259, 128260, 128261, 128257)
    assert fmt.END_OF_SPEECH == 128258 and fmt.END_OF_TEXT == 128009 and fmt.BEGIN_OF_TEXT == 128000
    assert fmt.AUDIO_BASE == 128266 and fmt.AUDIO_LAST == 156937


def test_prompt_with_voice_is_exact(tokenizer):
    text_ids = tokenizer("tara: Hello <laugh> world")["input_ids"]
    assert text_ids[0] == 128000 and all(i < 128000 for i in text_ids[1:])
    prompt = fmt.build_prompt(tokenizer, "Hello <laugh> world", "tara")
    assert prompt == [128259, *text_ids, 128009, 128260, 128261, 128257]
    # The voice prefix is the bare name, a colon and a space, byte for byte.
    assert tokenizer.decode(prompt[2:-4]) == "tara: Hello <laugh> world"


def test_prompt_without_voice_is_the_bare_text(tokenizer):
    prompt = fmt.build_prompt(tokenizer, "Hi.", None)
    assert prompt == [128259, *tokenizer("Hi.")["input_ids"], 128009, 128260, 128261, 128257]
    assert tokenizer.decode(prompt[2:-4]) == "Hi."


def test_frame_layout_positions():
    frames = np.array([[10, 20, 30, 31, 21, 32, 33], [11, 22, 34, 35, 23, 36, 37]])
    c0, c1, c2 = fmt.frames_to_codes(frames)
    assert c0.tolist() == [10, 11]
    assert c1.tolist() == [20, 21, 22, 23]
    assert c2.tolist() == [30, 31, 32, 33, 34, 35, 36, 37]
    assert (fmt.codes_to_frames([c0, c1, c2]) == frames).all()


def test_ids_round_trip_and_ranges():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4096, size=(50, 7))
    frames[0] = 0  # code 0 is valid
    frames[1] = 4095
    ids = fmt.frames_to_ids(frames)
    for k, i in enumerate(ids):
        lo, hi = fmt.position_range(k % 7)
        assert lo <= i < hi
    assert (fmt.ids_to_frames(ids) == frames).all()


def test_incomplete_frame_dropped_and_bad_ids_rejected():
    ids = fmt.frames_to_ids(np.zeros((2, 7), dtype=int))
    assert fmt.ids_to_frames(ids + ids[:5]).shape == (2, 7)
    swapped = ids[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]  # a position-1 id at position 0
    with pytest.raises(ValueError):
        fmt.ids_to_frames(swapped)
    with pytest.raises(ValueError):
        fmt.frames_to_ids(np.full((1, 7), 4096))
