"""enginelog.to_log: what the engine writes to file descriptors 1 and 2 (its worker processes included) lands in
the run dir's engine.log, our console still reaches the terminal, and an engine failure is one line naming the
root cause and the log (fast: a child process stands in for the engine's worker)."""
import io
import subprocess
import sys

import pytest
from rich.console import Console

from cai_gen.enginelog import to_log
from cai_gen.errors import UserError


def test_engine_output_goes_to_the_log_and_a_failure_names_its_root_cause(tmp_path, capfd):
    log = tmp_path / "engine.log"
    console = Console(file=io.StringIO())
    with pytest.raises(UserError) as e:
        with to_log(log, console):
            # a worker process, as vLLM's engine core is: it inherits fds 1 and 2
            subprocess.run([sys.executable, "-c", "import sys; print('INFO 11-24 noisy engine line'); "
                            "print('ValueError: Available memory on node 0 is less than desired', file=sys.stderr)"])
            console.print("engine: up")  # ours: to the terminal's copy, not the log
            raise RuntimeError("Engine core initialization failed. See root cause above.")
    out, err = capfd.readouterr()
    text = log.read_text()
    assert "noisy engine line" in text and "Traceback" in text and "noisy" not in out + err
    assert str(e.value) == ("engine: ValueError: Available memory on node 0 is less than desired "
                            f"(full log: {log})")
    assert "engine: up" in err + console.file.getvalue()
    print("after")  # descriptors are restored
    assert capfd.readouterr().out == "after\n"
