"""The allocator setting the CLI applies (musplit.runtime)."""

import subprocess
import sys

CODE = "from musplit.runtime import tune_allocator as t; print(t(), t())"


def _run(env_value: str | None) -> str:
    import os

    env = dict(os.environ)
    env.pop("MUSPLIT_TUNE_MALLOC", None)
    if env_value is not None:
        env["MUSPLIT_TUNE_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         check=True)
    return out.stdout.strip()


def test_tune_allocator_takes_effect_once_on_glibc():
    # This project's machines are glibc Linux: mallopt accepts both settings.
    assert _run(None) == "True True"


def test_tune_allocator_can_be_turned_off():
    assert _run("0") == "False False"
    assert _run("off") == "False False"
