"""Runs a command on a pseudo-terminal, as a person at a terminal would.

Used by the integration tests for what only happens at a terminal: the
confirmation prompt, and Ctrl-C typed at it (the terminal, not the test,
turns ^C into SIGINT for the foreground process group).

    pty_drive.py WAIT_FOR DELAY KEYS -- COMMAND...

Waits until the output contains WAIT_FOR, sleeps DELAY seconds, types KEYS
("yes\\n", or "\\x03" for Ctrl-C; Python escapes are read), then reads the
output to the end. A command still running a minute after the keys were
typed is killed (a prompt that ignores Ctrl-C must fail its test, not hang
it). Prints one JSON object: the exit code and the output.
"""

import json
import os
import pty
import select
import signal
import sys
import time

AFTER_KEYS = 60.0


def main() -> None:
    wait_for, delay, keys = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    keys = keys.encode().decode("unicode_escape").encode()
    command = sys.argv[sys.argv.index("--") + 1 :]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(command[0], command)
    output = b""
    typed = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not typed and wait_for.encode() in output:
            time.sleep(delay)
            os.write(fd, keys)
            typed = True
            deadline = time.monotonic() + AFTER_KEYS
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    finished, status = os.waitpid(pid, os.WNOHANG)
    if finished == 0:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"code": code, "typed": typed, "output": output.decode(errors="replace")}))


if __name__ == "__main__":
    main()
