#!/usr/bin/env python3
"""Resident memory of a program once it has loaded, before it reads its input: run PROGRAM with stdin a
pipe, wait for a stderr line containing MARK (ds-generate prints "loaded in" after loading its weights and
before it reads prompts), read VmRSS from /proc/PID/status, then feed it STDIN_FILE and wait.

  rss_loaded.py MARK STDIN_FILE STDERR_FILE PROGRAM ARGS...  ->  "<VmRSS KiB at MARK> <exit status>"
"""
import subprocess
import sys

mark, stdin_file, err_file = sys.argv[1:4]
p = subprocess.Popen(sys.argv[4:], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
rss, lines = -1, []
for line in p.stderr:
    lines.append(line)
    if mark.encode() in line:
        with open("/proc/%d/status" % p.pid) as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        break
p.stdin.write(open(stdin_file, "rb").read())
p.stdin.close()
lines += p.stderr.readlines()
status = p.wait()
open(err_file, "wb").write(b"".join(lines))
print(rss, status)
