"""ToneCodec: SnacCodec's decode_windows at no cost, for measuring everything around the codec.

Every window decodes to a constant level (well above the silence guard's threshold), of exactly the
length SNAC would give it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.windows import Window

LEVEL = 0.1


class ToneCodec:
    def decode_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        return [np.full(w.count * fmt.SAMPLES_PER_FRAME, LEVEL, np.float32) for w in windows]
