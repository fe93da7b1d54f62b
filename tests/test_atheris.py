"""Coverage-guided fuzzing of the envelope decoder with atheris (slow).

The fuzzer runs in a child process (atheris ends its process when done) for
a fixed number of inputs, seeded with valid envelopes; a crash, a hang or an
exception other than DecodeError fails the test.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))


def seed_corpus(folder):
    from pylm_core import PalmMessage
    samples = [
        PalmMessage(),
        PalmMessage(pipeline="p", client="c", stage=3, function="a.b c.d", cache="k",
                    payload=b"x" * 100),
        PalmMessage(stage=-1, payload=b"\x00\xff" * 40, error="E"),
        PalmMessage(function="s\u00e9rvice.m\u00e9thode", payload=b""),
    ]
    for i, msg in enumerate(samples):
        with open(os.path.join(folder, "seed%d" % i), "wb") as f:
            f.write(msg.SerializeToString())


@pytest.mark.timeout(600)
def test_atheris_fuzzes_the_decoder(tmp_path):
    atheris = pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    del atheris
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seed_corpus(str(corpus))
    runs = int(os.environ.get("PYLM_ATHERIS_RUNS", "2000000"))
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "fuzz", "atheris_envelope.py"),
         "-runs=%d" % runs, "-max_len=4096", "-timeout=10", str(corpus)],
        capture_output=True, text=True, timeout=540, cwd=str(tmp_path))
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert "Done %d runs" % runs in tail, tail
