#!/usr/bin/env python3
"""Drive `ds-generate --chat` through a real pseudo-terminal, as a person at a terminal would.

  chat_pty.py OUTDIR -- PROGRAM ARGS...

stdin holds the script, one action per line:
  say TEXT        type TEXT and Enter; wait for the reply and the next prompt
  interrupt TEXT  type TEXT and Enter; press Ctrl-C once the reply has started streaming
  ctrl-c          press Ctrl-C at the prompt (wait for the next prompt, or the exit)
  eof             press Ctrl-D at the prompt
The program's stdin and stdout are the terminal (its controlling terminal, so Ctrl-C is the line
discipline's SIGINT, not a kill from here); its stderr goes to OUTDIR/stderr. The terminal does not
echo and does not turn \\n into \\r\\n, so OUTDIR/reply.N holds exactly the bytes written after the
N-th action (0-based) up to the next prompt "> ", without the newline before it; OUTDIR/status the
exit status. A message that is not a /command counts as answered once stderr also holds one more
verbose turn line ("chat: turn ...", so run with -v) or a "context full" warning: a reply's own text
may contain "> ". Waits are bounded (60 s per action).
"""
import fcntl
import os
import select
import subprocess
import sys
import termios
import time

PROMPT = b"> "


def main():
    outdir = sys.argv[1]
    assert sys.argv[2] == "--"
    cmd = sys.argv[3:]
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # oflag: bytes as written
    attrs[3] &= ~(termios.ECHO | termios.ECHOCTL)  # lflag: no echo; ISIG and ICANON stay
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    err = open(os.path.join(outdir, "stderr"), "wb")

    def make_controlling():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=err, start_new_session=True,
                            preexec_fn=make_controlling)
    os.close(slave)
    buf = bytearray()
    err_path = os.path.join(outdir, "stderr")

    def turns_logged():
        with open(err_path, "rb") as f:
            return sum(1 for l in f if l.startswith(b"chat: turn ") or b"warning: context full" in l)

    def read_until(pred, limit=60.0):
        end = time.time() + limit
        while not pred():
            left = end - time.time()
            if left <= 0:
                raise SystemExit("chat_pty: timed out; output so far: %r" % bytes(buf[-400:]))
            r, _, _ = select.select([master], [], [], min(left, 0.5))
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the program exited and closed the terminal
                    chunk = b""
                if not chunk:
                    if proc.poll() is not None:
                        return False
                    continue
                buf.extend(chunk)
            elif proc.poll() is not None:
                return False
        return True

    if not read_until(lambda: buf.endswith(PROMPT)):
        raise SystemExit("chat_pty: no prompt; output: %r" % bytes(buf))
    del buf[:]
    for i, line in enumerate(sys.stdin.read().splitlines()):
        action, _, text = line.partition(" ")
        turns = turns_logged()
        is_turn = action == "interrupt" or (action == "say" and not text.startswith("/"))
        if action in ("say", "interrupt"):
            os.write(master, text.encode() + b"\n")
            if action == "interrupt":
                read_until(lambda: len(buf) > 0)
                os.write(master, b"\x03")
        elif action == "ctrl-c":
            os.write(master, b"\x03")
        elif action == "eof":
            os.write(master, b"\x04")
        else:
            raise SystemExit("chat_pty: unknown action %r" % action)
        read_until(lambda: buf.endswith(PROMPT) and (not is_turn or turns_logged() > turns))
        out = bytes(buf)
        if out.endswith(PROMPT):
            out = out[: -len(PROMPT)]
        if out.endswith(b"\n"):
            out = out[:-1]
        with open(os.path.join(outdir, "reply.%d" % i), "wb") as f:
            f.write(out)
        del buf[:]
    try:
        status = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = "running"
    with open(os.path.join(outdir, "status"), "w") as f:
        f.write("%s\n" % status)


if __name__ == "__main__":
    main()
