"""Identifies planted Keras ports in this process (``KERAS_BACKEND`` set by the caller).

Usage: ``PYTHONPATH=tests python tests/planted_ports/identify_keras.py NAME...``; the last line of
stdout is ``@@identify <JSON list of Identification.to_json()>``.
"""

from __future__ import annotations

import json
import sys

from sai_conformance._identify import identify

if __name__ == "__main__":
    results = [identify(f"planted_ports.keras_ports:{name}").to_json() for name in sys.argv[1:]]
    print("@@identify " + json.dumps(results), flush=True)
