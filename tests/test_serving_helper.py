"""The end-to-end tests' server helper fails loudly: a server that does not start raises with
its own output instead of handing back a URL nothing listens on."""

from __future__ import annotations

import pytest

from tests._serving import ServerDidNotStart, served


@pytest.mark.slow  # a real `featurebank serve` start-up (~3 s)
def test_a_server_that_does_not_start_raises_with_its_output(tmp_path):
    missing = tmp_path / "no-such-model.onnx"
    with pytest.raises(ServerDidNotStart, match=r"(?s)exit status 1.*no-such-model\.onnx"):
        with served("--model", str(missing)):
            pytest.fail("served() yielded a URL for a server that never started")
