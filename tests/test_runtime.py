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


def test_available_memory_is_at_most_the_machines_and_honours_a_cgroup_limit(monkeypatch):
    import builtins
    import io
    import sys

    from musplit.runtime import available_memory

    if not sys.platform.startswith("linux"):
        assert available_memory() is None
        return
    total = int(open("/proc/meminfo").readline().split()[1]) * 1024
    got = available_memory()
    assert 0 < got <= total
    files = {"/proc/meminfo": "MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n",
             "/sys/fs/cgroup/memory.max": "3000000000\n",
             "/sys/fs/cgroup/memory.current": "1000000000\n"}
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(files[path]))
    assert available_memory() == 2_000_000_000  # the container's 3 GB less 1 GB in use
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert available_memory() == 4_000_000 * 1024
    del files["/proc/meminfo"]
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (
        io.StringIO(files[path]) if path in files else (_ for _ in ()).throw(OSError(path))))
    assert available_memory() is None
