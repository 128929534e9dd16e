"""Collection rules for the planted ports (pytest imports every module here for its doctests).

``keras_ports`` imports Keras, whose backend is fixed per process: it is only imported inside the
per-backend subprocesses of tests/test_identify_planted.py. ``broken_import`` raises on purpose.
``identify_keras`` is the script those subprocesses run.
"""

collect_ignore = ["keras_ports.py", "broken_import.py", "identify_keras.py"]
