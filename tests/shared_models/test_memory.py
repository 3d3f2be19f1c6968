"""The allocator settings for processes that move whole models: freed model-sized blocks are reused, not re-faulted."""

import json
import os
import subprocess
import sys

import pytest

from shared_models.memory import DEFAULTS_ENV

# In a fresh interpreter: a message's round trip of mnist-cnn's largest layer (6.4 MB) as the ClientApp makes it
# (ArrayRecord -> state_dict -> reply ArrayRecord), 40 times, counting the minor page faults that costs. With glibc's
# defaults the model-sized blocks are unmapped when freed and faulted in again, page by page, the next time.
PROBE = """
import json, resource
from shared_models.memory import reuse_freed_memory
took = reuse_freed_memory()
import torch
from flwr.app import ArrayRecord
state = {"weight": torch.ones(1_605_632), "bias": torch.ones(512)}
def message():
    return ArrayRecord(ArrayRecord(state).to_torch_state_dict())
message()  # the first one is paid for either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    message()
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(**env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's (Linux)")
def test_freed_model_sized_blocks_are_reused_instead_of_faulted_in_again():
    defaults, reused = _probe(**{DEFAULTS_ENV: "1"}), _probe(**{DEFAULTS_ENV: ""})
    assert defaults["took"] is False and reused["took"] is True
    pages = 1_605_632 * 4 // 4096
    assert defaults["faults"] > 20 * pages, "glibc's defaults: blocks faulted in again (the premise)"
    assert reused["faults"] < pages, "with the settings, the 40 round trips reuse the first one's pages"
